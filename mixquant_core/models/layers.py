"""Which weights MixQuant quantizes: every Conv1d/2d/3d and Linear weight, by fully qualified name."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Iterable, List, Sequence

import torch
from torch import nn

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# Layer kinds of the paper's section 6 ablation, plus depthwise (MobileNet/EfficientNet).
KINDS = ("first_conv", "kxk_conv", "1x1_conv", "depthwise", "fc")


@dataclass(frozen=True)
class LayerInfo:
    name: str  # fully qualified module name, e.g. "_blocks.3._depthwise_conv"
    kind: str  # one of KINDS
    params: int  # number of weight elements
    shape: tuple

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "params": self.params, "shape": list(self.shape)}


# TorchScript modules are RecursiveScriptModule instances; they keep the class name and attributes.
_SCRIPT_NAMES = {"Conv1d": "conv", "Conv2d": "conv", "Conv3d": "conv", "Linear": "fc"}


def _layer_type(module: nn.Module) -> str | None:
    """'conv', 'fc' or None (not quantizable), for eager and TorchScript modules alike."""
    if isinstance(module, nn.Linear):
        return "fc"
    if isinstance(module, QUANTIZABLE):
        return "conv"
    if isinstance(module, torch.jit.ScriptModule):
        return _SCRIPT_NAMES.get(getattr(module, "original_name", ""))
    return None


def _kind(module: nn.Module, is_first_conv: bool) -> str:
    if _layer_type(module) == "fc":
        return "fc"
    if is_first_conv:
        return "first_conv"
    if module.groups > 1 and module.groups == module.in_channels:
        return "depthwise"
    if all(k == 1 for k in module.kernel_size):
        return "1x1_conv"
    return "kxk_conv"


def find_layers(model: nn.Module, exclude: Sequence[str] = ()) -> List[LayerInfo]:
    """Quantizable layers in model order; ``exclude`` holds fnmatch patterns of names to skip."""
    layers: List[LayerInfo] = []
    seen_conv = False
    for name, module in model.named_modules():
        layer_type = _layer_type(module)
        if layer_type is None or getattr(module, "weight", None) is None:
            continue
        is_conv = layer_type == "conv"
        kind = _kind(module, is_conv and not seen_conv)
        seen_conv = seen_conv or is_conv
        if any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
            continue
        w = module.weight
        layers.append(LayerInfo(name, kind, int(w.numel()), tuple(w.shape)))
    return layers


def layer_weights(model: nn.Module, layers: Iterable[LayerInfo]) -> List[torch.Tensor]:
    """Each layer's weight, found by walking its dotted name (building a dict of every module first
    costs more than the fast QE table itself on deep models)."""
    out = []
    for layer in layers:
        module = model
        for part in layer.name.split(".") if layer.name else ():
            module = module._modules[part] if part in module._modules else getattr(module, part)
        out.append(module.weight)
    return out


def pinned_mask(layers: Sequence[LayerInfo], keep_first_last: bool) -> List[bool]:
    """Layers held at 8 bits: the first and last quantizable layer when asked (a common practice)."""
    mask = [False] * len(layers)
    if keep_first_last and layers:
        mask[0] = mask[-1] = True
    return mask
