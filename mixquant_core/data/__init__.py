"""Stage 1, the images: evaluation and calibration folders, decoded into uint8 tensors or streamed.
Imports only ``mixquant_core.errors`` (preprocessing arrives as an object, duck-typed)."""
from .image_sets import (EvalTensors, ImageList, default_calib_dir, default_eval_dir, open_calibration_folder,
                         open_image_folder, open_imagenette)
from .load import load_tensors
from .streaming import StreamedImages

__all__ = ["EvalTensors", "ImageList", "default_calib_dir", "default_eval_dir", "load_tensors",
           "open_calibration_folder", "open_image_folder", "open_imagenette", "StreamedImages"]
