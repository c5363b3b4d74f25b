"""Stage 6, files others use: the quantized model as packed integer codes in one .safetensors
file, read back bit-exact. Imports recon/ and the stages below it only."""
from .packed import ExportError, load_quantized_, read_quantized, save_quantized, size_report

__all__ = ["ExportError", "load_quantized_", "read_quantized", "save_quantized", "size_report"]
