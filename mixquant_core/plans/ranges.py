"""Loss-aware weight ranges for a model's layers (issue #22): a ``WeightRanges`` holding, for every
layer and candidate bit-width, the clipping ratio per grid row chosen by a loss-aware score on
calibration images (quant/loss_ranges.py). The Fisher score reuses the Fisher diagonal of the
allocation (plans/fisher.py); the output-error score collects each layer's input Gram matrix here.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.image_sets import EvalTensors
from ..errors import DatasetError, MixQuantError
from ..models.layers import LayerInfo, layer_weights, weight_ref
from ..quant.loss_ranges import METHODS, fisher_ratios, output_ratios
from ..quant.quantizers import get_quantizer
from ..quant.recipe import WeightRanges

Progress = Optional[Callable[[int, int, str], None]]


def calibration_record(data: EvalTensors, method: str) -> dict:
    """What a plan records of the calibration its ranges came from (no timings: the same
    calibration must give the same recipe, and so the same cache and store keys)."""
    return {"score": method, "images": len(data), "labelled": int((data.labels >= 0).sum()),
            "fingerprint": data.fingerprint}


def search_ranges(weights: Sequence[torch.Tensor], names: Sequence[str], scores: Sequence[torch.Tensor],
                  bits: Sequence[int], scheme: str, method: str = "fisher", progress: Progress = None) -> Dict:
    """(name, bits) -> clipping ratios (tuple, one per grid row) for every layer and bit-width;
    ``scores`` are the layers' Fisher diagonals (``fisher``) or input Gram matrices (``output``)."""
    get_quantizer(scheme)
    if method not in METHODS:
        raise MixQuantError(f"unknown range score '{method}'; choose one of {', '.join(METHODS)}")
    search = fisher_ratios if method == "fisher" else output_ratios
    out = {}
    with torch.no_grad():
        for i, (name, w, s) in enumerate(zip(names, weights, scores)):
            w = w.detach().float().cpu()
            for b in bits:
                ratios, _ = search(w, s.cpu() if s is not None else torch.zeros_like(w, dtype=torch.float64), int(b), scheme)
                out[(name, int(b))] = tuple(round(float(r), 2) for r in ratios)
            if progress:
                progress(i + 1, len(names), f"ranges: {name}")
    return out


def fisher_weight_ranges(model: nn.Module, layers: Sequence[LayerInfo], fisher: Sequence[torch.Tensor],
                         data: EvalTensors, bits: Sequence[int], scheme: str, progress: Progress = None) -> WeightRanges:
    """Loss-aware ranges by the Fisher-weighted error, from the Fisher diagonal ``fisher`` of ``data``."""
    ratios = search_ranges(layer_weights(model, layers), [l.name for l in layers], fisher, bits, scheme, "fisher", progress)
    return WeightRanges("fisher", ratios, calibration_record(data, "fisher"))


def _inputs_as_columns(module: nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
    """The layer's input as [G, M, N] columns (im2col for a Conv2d), None for an unsupported layer."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).t()[None]
    if isinstance(module, nn.Conv2d) and isinstance(module.padding, tuple):
        if module.padding_mode != "zeros":
            return None
        cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)  # [N, Cin*k*k, L]
        g = module.groups
        n, m, length = cols.shape
        return cols.reshape(n, g, m // g, length).permute(1, 2, 0, 3).reshape(g, m // g, n * length)
    return None


def layer_grams(model: nn.Module, layers: Sequence[LayerInfo], data: EvalTensors, batch_size: int = 8,
                progress: Progress = None) -> List[Optional[torch.Tensor]]:
    """Per layer, sum over the calibration inputs of x x^T [G, M, M] (float64; im2col columns for
    convs, one matrix per group), or None where the layer is neither Linear nor a zero-padded Conv2d."""
    if len(data) == 0:
        raise DatasetError("the calibration set is empty: loss-aware ranges need at least one image")
    grams: List[Optional[torch.Tensor]] = [None] * len(layers)
    handles = []

    def hook(i):
        def run(module, args):
            cols = _inputs_as_columns(module, args[0].detach().float())
            if cols is not None:
                g = torch.einsum("gmn,gkn->gmk", cols, cols).double()
                grams[i] = g if grams[i] is None else grams[i] + g
        return run

    for i, layer in enumerate(layers):
        ref = weight_ref(model, layer.name)
        if ref.attr == "weight" and isinstance(ref.owner, (nn.Linear, nn.Conv2d)):
            handles.append(ref.owner.register_forward_pre_hook(hook(i)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            done = 0
            for x, _ in data.batches(batch_size):
                model(x)
                done += len(x)
                if progress:
                    progress(done, len(data), "ranges: layer inputs")
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return grams


def output_weight_ranges(model: nn.Module, layers: Sequence[LayerInfo], data: EvalTensors, bits: Sequence[int],
                         scheme: str, fallback: Sequence[torch.Tensor], progress: Progress = None) -> WeightRanges:
    """Loss-aware ranges by each layer's output error on ``data``; a layer whose inputs could not be
    collected is scored by ``fallback`` (its Fisher diagonal) instead."""
    grams = layer_grams(model, layers, data)
    weights = layer_weights(model, layers)
    names = [l.name for l in layers]
    ratios = {}
    for i, (name, w, g) in enumerate(zip(names, weights, grams)):
        method, score = ("output", g) if g is not None else ("fisher", fallback[i])
        ratios.update(search_ranges([w], [name], [score], bits, scheme, method))
        if progress:
            progress(i + 1, len(names), f"ranges: {name}")
    return WeightRanges("output", ratios, calibration_record(data, "output"))
