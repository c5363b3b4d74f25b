"""Stage 1, the model: the registry (built-in, torchvision, timm, files), its preprocessing, and
which layers get quantized, and what a layer sees (its inputs' Hessian, ``layer_inputs``). Imports
only ``mixquant_core.errors``."""
from .devices import resolve_device
from .layers import KINDS, LayerInfo, find_layers, float32_rest
from .registry import DEFAULT_MODEL, PAPER_MODELS, LoadedModel, build_model, list_models, load_model

__all__ = ["KINDS", "LayerInfo", "find_layers", "float32_rest", "DEFAULT_MODEL", "PAPER_MODELS", "LoadedModel", "build_model",
           "list_models", "load_model", "resolve_device"]
