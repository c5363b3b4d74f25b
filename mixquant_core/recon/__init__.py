"""Stage 5, better rounding: AdaRound weights reconstructed block by block (BRECQ) on calibration
images, for a plan's bit-widths. Imports evaluation/ and the stages below it only."""
from .reconstruct import ReconConfig, ReconResult, reconstruct, reconstruct_from_folder, reconstruct_plan

__all__ = ["ReconConfig", "ReconResult", "reconstruct", "reconstruct_from_folder", "reconstruct_plan"]
