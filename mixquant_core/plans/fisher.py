"""Fisher sensitivity: what quantizing one layer to b bits costs the model, per layer and bit-width.

With g_i the gradient of image i's cross-entropy loss with respect to a layer's weights, the
diagonal empirical Fisher is F = mean_i g_i**2 (over a small calibration batch; labels from the
set, or the model's own top-1 prediction for images without one). A second-order expansion of the
loss around trained weights, with F standing in for the Hessian, gives the loss increase of a
weight perturbation d as about 0.5 * sum(F * d**2); the table holds

    cost(l, b) = sum over the layer's weights of F * (w - dequant(quant(w, b)))**2

(the "Fisher-weighted error"; as in FIT, Zandonati et al. 2022). The gradients are taken once
(one backward pass per calibration image) and reused for every bit-width.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.image_sets import NO_LABEL, EvalTensors
from ..errors import DatasetError, MixQuantError
from ..models.layers import LayerInfo, layer_weights
from ..quant.qe import normalize_bits
from ..quant.quantizers import check_finite, get_quantizer
from ..quant.recipe import Quantizer, quantize_layer, scheme_of

Progress = Optional[Callable[[int, int, str], None]]


@dataclass
class FisherTable:
    """Fisher-weighted error per layer (rows, model order) and bit-width (columns, descending)."""

    layers: List[LayerInfo]
    bits: tuple
    cost: np.ndarray  # [L, B] float64: sum F * (w - q(w, b))**2
    fisher_sum: np.ndarray  # [L] sum of F over the layer's weights (how much the loss feels it)
    images: int  # calibration images used
    labelled: int  # of which had a label (the rest used the model's prediction)
    quantizer: str
    diagonal: Optional[List[torch.Tensor]] = field(default=None, repr=False)  # F per layer weight (float64)

    def column(self, b: int) -> np.ndarray:
        return self.cost[:, self.bits.index(b)]

    def to_dict(self) -> dict:
        return {
            "quantizer": self.quantizer, "bits": list(self.bits), "images": self.images, "labelled": self.labelled,
            "layers": [{"name": layer.name, "kind": layer.kind, "params": layer.params,
                        "fisher_sum": float(self.fisher_sum[i]),
                        "cost": {str(b): float(self.cost[i, j]) for j, b in enumerate(self.bits)}}
                       for i, layer in enumerate(self.layers)],
        }


def fisher_diagonal(model: nn.Module, layers: Sequence[LayerInfo], data: EvalTensors,
                    device: str | torch.device = "cpu", progress: Progress = None) -> List[torch.Tensor]:
    """Mean over images of the squared per-image loss gradient, one tensor per layer weight.

    Labels below 0 mean "no label": that image's target is the model's own top-1 prediction.
    The model stays in eval mode (BatchNorm uses its running statistics, no dropout), and only
    the layer weights get gradients; every ``requires_grad`` flag is restored afterwards.
    """
    if len(data) == 0:
        raise DatasetError("the calibration set is empty: Fisher sensitivity needs at least one image")
    device = torch.device(device)
    model = model.to(device)
    weights = layer_weights(model, layers)
    for layer, w in zip(layers, weights):
        check_finite(w.detach(), layer.name)
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    sums = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
    try:
        model.eval()
        for p in flags:
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        n = len(data)
        for i in range(n):
            x = data.inputs(i, i + 1).to(device=device, dtype=weights[0].dtype)
            logits = model(x)
            if i == 0:
                data.check_labels(logits.shape[1], allow_unlabelled=True)
            label = int(data.labels[i])
            target = logits.detach().argmax(dim=1) if label < 0 else torch.tensor([label], device=device)
            loss = F.cross_entropy(logits, target)
            grads = torch.autograd.grad(loss, weights)
            for s, g in zip(sums, grads):
                s += g.double() ** 2
            if progress:
                progress(i + 1, n, "Fisher: gradients")
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    fisher = [s / len(data) for s in sums]
    for layer, f in zip(layers, fisher):
        if not torch.isfinite(f).all():
            raise MixQuantError(f"the loss gradient of layer '{layer.name}' is NaN/Inf on the calibration images")
    return fisher


def fisher_cost(w: torch.Tensor, fisher: torch.Tensor, bits: Sequence[int], quantizer: Quantizer,
                name: str = "") -> List[float]:
    """sum F * (w - dequant(quant(w, b)))**2 for each b, on the grid ``quantizer`` (a scheme, or a
    Recipe whose calibrated ranges for layer ``name`` apply) really gives the layer."""
    w = w.detach()
    out = []
    for b in bits:
        err = w.double() - quantize_layer(quantizer, name, w.float(), int(b)).double()
        out.append(float(torch.sum(fisher * err * err)))
    return out


def fisher_table(model: nn.Module, layers: Sequence[LayerInfo], data: EvalTensors, quantizer: Quantizer = "asymmetric",
                 bits: Sequence[int] = (8, 7, 6, 5, 4, 3, 2), device: str | torch.device = "cpu",
                 progress: Progress = None, fisher: Optional[Sequence[torch.Tensor]] = None) -> FisherTable:
    """The Fisher-weighted error table for ``layers`` over the calibration images ``data`` (whose
    Fisher diagonal ``fisher`` is computed here unless given)."""
    get_quantizer(scheme_of(quantizer))
    bits = normalize_bits(bits)
    if not layers:
        raise MixQuantError("the model has no Conv or Linear layer to quantize")
    if fisher is None:
        fisher = fisher_diagonal(model, layers, data, device, progress)
    cost = np.zeros((len(layers), len(bits)), dtype=np.float64)
    with torch.no_grad():
        for i, (layer, w, f) in enumerate(zip(layers, layer_weights(model, layers), fisher)):
            cost[i] = fisher_cost(w, f, bits, quantizer, layer.name)
    return FisherTable(layers=list(layers), bits=bits, cost=cost,
                       fisher_sum=np.array([float(f.sum()) for f in fisher]), images=len(data),
                       labelled=int((data.labels >= 0).sum()), quantizer=scheme_of(quantizer), diagonal=fisher)
