"""Evaluation engines: the same metrics from eager PyTorch or from ONNX Runtime (CPU).
Part of stage 4 (evaluation/); imports plans/, quant/, models/ and evaluation.evaluate only."""
from .select import ENGINES, Engine, get_engine

__all__ = ["ENGINES", "Engine", "get_engine"]
