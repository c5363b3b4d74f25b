"""The QE table: for every layer and candidate bit-width, MSE(w, dequant(quant(w, b)))."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InvalidWeightsError, MixQuantError
from ..models.layers import LayerInfo, find_layers, layer_weights
from .quantizers import MAX_BITS, MIN_BITS, check_finite, get_quantizer, is_mse
from .recipe import Quantizer, Recipe, quantize_layer, scheme_of

DEFAULT_BITS = (8, 7, 6, 5, 4, 3, 2)
BASE_BITS = 8  # equation (1) compares every bit-width against the 8-bit QE
Progress = Optional[Callable[[int, int, str], None]]  # (done, total, what)


def normalize_bits(bits: Sequence[int]) -> tuple:
    """Candidate bit-widths, descending, unique, always holding 8 (the reference of equation 1)."""
    try:
        values = {int(b) for b in bits}
    except (TypeError, ValueError):
        raise MixQuantError(f"bit-widths must be integers from {MIN_BITS} to {MAX_BITS}, got {bits!r}") from None
    bad = sorted(b for b in values if not MIN_BITS <= b <= MAX_BITS)
    if bad:
        raise MixQuantError(f"bit-widths must be from {MIN_BITS} to {MAX_BITS}; got {bad}")
    values.add(BASE_BITS)
    return tuple(sorted(values, reverse=True))


@dataclass
class QETable:
    """QE per layer (rows, model order) and bit-width (columns, descending)."""

    layers: List[LayerInfo]
    bits: tuple
    qe: np.ndarray  # [L, B] float64
    mean_sq: np.ndarray  # [L]  mean(w^2), for RQE
    quantizer: str

    @property
    def rqe(self) -> np.ndarray:
        """Relative QE = QE / mean(w^2) (the paper's RQE; its formula was lost, this is our reading)."""
        denom = np.where(self.mean_sq > 0, self.mean_sq, 1.0)
        return self.qe / denom[:, None]

    @property
    def names(self) -> List[str]:
        return [layer.name for layer in self.layers]

    @property
    def params(self) -> np.ndarray:
        return np.array([layer.params for layer in self.layers], dtype=np.int64)

    def column(self, b: int) -> np.ndarray:
        return self.qe[:, self.bits.index(b)]

    def to_dict(self) -> dict:
        """The CLI's ``qe --json`` shape (a contract)."""
        return {
            "quantizer": self.quantizer,
            "bits": list(self.bits),
            "layers": [
                {"name": layer.name, "kind": layer.kind, "params": layer.params,
                 "qe": {str(b): float(self.qe[i, j]) for j, b in enumerate(self.bits)}}
                for i, layer in enumerate(self.layers)
            ],
        }


def _layer_qe_reference(w: torch.Tensor, bits: Sequence[int], quantizer: Quantizer, name: str = "") -> List[float]:
    return [float(torch.mean((w - quantize_layer(quantizer, name, w, b)) ** 2)) for b in bits]


def _reference_rows(weights, layers, bits, quantizer, progress):
    """Algorithm 1 as written: one quantizer run per layer and bit-width."""
    qe = np.zeros((len(layers), len(bits)), dtype=np.float64)
    mean_sq = np.zeros(len(layers), dtype=np.float64)
    for i, (layer, w) in enumerate(zip(layers, weights)):
        check_finite(w, layer.name)
        qe[i] = _layer_qe_reference(w, bits, quantizer, layer.name)
        mean_sq[i] = float(torch.mean(w.double() ** 2))
        if progress:
            progress(i + 1, len(layers), layer.name)
    return qe, mean_sq


def _fast_rows(weights, layers, bits, quantizer, progress):
    """All layers and bit-widths at once (``kernels``: numba on CPU, Triton on CUDA); the MSE
    quantizers' range search (tens of times slower) a layer at a time, so progress moves."""
    from . import kernels

    weights = [w.contiguous() for w in weights]
    qe = np.zeros((len(layers), len(bits)), dtype=np.float64)
    mean_sq = np.zeros(len(layers), dtype=np.float64)
    usable = [i for i, w in enumerate(weights) if w.numel()]
    per_layer = is_mse(quantizer)
    redo = [i for i in range(len(layers)) if i not in set(usable)]
    for group in [[i] for i in usable] if per_layer else [usable]:
        qe[group], mean_sq[group], ok = kernels.qe_rows([weights[i] for i in group], bits, quantizer)
        redo += [group[k] for k in np.flatnonzero(~ok)]
        if progress and per_layer:
            progress(group[0] + 1, len(layers), layers[group[0]].name)
    for i in sorted(redo):  # NaN/Inf raises naming the layer; finite but huge (w^2 overflows) or empty: reference
        qe[i:i + 1], mean_sq[i:i + 1] = _reference_rows([weights[i]], [layers[i]], bits, quantizer, None)
    if progress and not per_layer:
        for i, layer in enumerate(layers):
            progress(i + 1, len(layers), layer.name)
    return qe, mean_sq


def check_finite_qe(qe: np.ndarray, layers: Sequence[LayerInfo], weights: Sequence[torch.Tensor]) -> None:
    """Finite weights can still give an infinite QE (squares past float range): an error naming
    the first such layer, never an ``Infinity`` in a plan or a blank heatmap."""
    bad = np.flatnonzero(~np.isfinite(qe).all(axis=1))
    if len(bad):
        i = int(bad[0])
        peak = float(weights[i].abs().max()) if weights[i].numel() else 0.0
        more = f" (and {len(bad) - 1} more layer(s))" if len(bad) > 1 else ""
        raise InvalidWeightsError(f"layer '{layers[i].name[:200]}': its quantization error is not finite (weights up "
                                  f"to {peak:.3g} overflow the arithmetic){more}; the model's weights are unusable")


_METHODS = {"fast": _fast_rows, "reference": _reference_rows}


def _as_float32(w: torch.Tensor, device: torch.device) -> torch.Tensor:
    same_device = w.device == device or (device.type == w.device.type and device.index is None)
    return w if same_device and w.dtype == torch.float32 else w.to(device=device, dtype=torch.float32)


def qe_table(
    model: nn.Module,
    quantizer: Quantizer = "asymmetric",
    bits: Sequence[int] = DEFAULT_BITS,
    layers: Optional[List[LayerInfo]] = None,
    device: str | torch.device = "cpu",
    progress: Progress = None,
    method: str = "fast",
) -> QETable:
    """Compute the QE table. ``method='reference'`` is the paper's plain loop (Algorithm 1). A Recipe
    with calibrated weight ranges (loss-aware, issue #22) gives each layer and bit-width the grid
    of its ratios (that loop, through ``recipe.quantize_layer``); the fast kernels serve plain schemes."""
    if isinstance(quantizer, Recipe) and quantizer.weight_ranges is not None:
        method = "reference"
    else:
        quantizer = scheme_of(quantizer)
    get_quantizer(scheme_of(quantizer))  # fail early on a bad name
    bits = normalize_bits(bits)
    layers = find_layers(model) if layers is None else layers
    if not layers:
        raise MixQuantError("the model has no Conv or Linear layer to quantize")
    try:
        rows = _METHODS[method]
    except KeyError:
        raise MixQuantError(f"unknown QE method '{method}'; choose fast or reference") from None
    device = torch.device(device)
    with torch.inference_mode():
        weights = [_as_float32(w.detach(), device) for w in layer_weights(model, layers)]
        qe, mean_sq = rows(weights, layers, bits, quantizer, progress)
    check_finite_qe(qe, layers, weights)
    return QETable(layers=list(layers), bits=bits, qe=qe, mean_sq=mean_sq, quantizer=scheme_of(quantizer))
