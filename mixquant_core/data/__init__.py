"""Stage 1, the images: evaluation and calibration folders, decoded into tensors.
Imports only ``mixquant_core.errors``."""
from .image_sets import (EvalTensors, ImageList, default_calib_dir, default_eval_dir, load_tensors,
                         open_calibration_folder, open_image_folder, open_imagenette)

__all__ = ["EvalTensors", "ImageList", "default_calib_dir", "default_eval_dir", "load_tensors",
           "open_calibration_folder", "open_image_folder", "open_imagenette"]
