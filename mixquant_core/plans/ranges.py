"""Loss-aware weight ranges for a model's layers (issue #22): a ``WeightRanges`` holding, for every
layer and candidate bit-width, the clipping ratio per grid row chosen by a loss-aware score on
calibration images (quant/loss_ranges.py). The output-error score (the Workspace's) collects each
layer's input Gram matrix here; the Fisher score reuses the allocation's Fisher diagonal (plans/fisher.py).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..data.image_sets import EvalTensors
from ..errors import DatasetError, MixQuantError
from ..models.layers import LayerInfo, layer_weights
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


def layer_hessians(model: nn.Module, layers: Sequence[LayerInfo], data: EvalTensors, batch_size: int = 8,
                   progress: Progress = None) -> List[Optional[torch.Tensor]]:
    """Per layer, sum over the calibration inputs of x x^T [G, M, M] (float64): the columns GPTQ
    sees (models/layer_inputs.py: im2col after the conv's own SAME padding, one matrix per group, an
    attention's q/k/v row blocks), None for a layer that saw no input."""
    from ..models.layer_inputs import collected

    if len(data) == 0:
        raise DatasetError("the calibration set is empty: loss-aware ranges need at least one image")

    def batches():
        done = 0
        for x, _ in data.batches(batch_size):
            yield x
            done += len(x)
            if progress:
                progress(done, len(data), "ranges: layer inputs")

    was_training = model.training
    try:
        model.eval()
        inputs = collected(model, [layer.name for layer in layers], model, batches())
    finally:
        model.train(was_training)
    out: List[Optional[torch.Tensor]] = []
    for layer, coll in zip(layers, inputs):
        sums = [h.sum for h in coll.hessians]
        h = None if not sums else torch.cat(sums) if len(sums) > 1 else sums[0]
        if h is not None and not torch.isfinite(h).all():
            raise MixQuantError(f"layer '{layer.name}': its inputs on the calibration images are NaN/Inf; "
                                "loss-aware ranges need finite activations")
        out.append(h)
    return out


def output_weight_ranges(model: nn.Module, layers: Sequence[LayerInfo], data: EvalTensors, bits: Sequence[int],
                         scheme: str, progress: Progress = None) -> WeightRanges:
    """Loss-aware ranges by each layer's output error on ``data`` (the default: on Lite0 it beat
    the Fisher-weighted score, docs/RESULTS.md); a layer that saw no input keeps the MSE choice."""
    hessians = layer_hessians(model, layers, data, progress=progress)
    weights = layer_weights(model, layers)
    ratios = {}
    for i, (layer, w, h) in enumerate(zip(layers, weights, hessians)):
        if h is None:  # all-zero Gram: output_ratios falls back to the MSE choice
            h = torch.zeros(1, w[0].numel(), w[0].numel(), dtype=torch.float64)
        ratios.update(search_ranges([w], [layer.name], [h], bits, scheme, "output"))
        if progress:
            progress(i + 1, len(layers), f"ranges: {layer.name}")
    return WeightRanges("output", ratios, calibration_record(data, "output"))
