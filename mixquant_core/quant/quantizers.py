"""Weight quantizers as small pure functions: ``quantize(w, nbits) -> (codes, meta)`` and
``dequantize(codes, meta) -> w_hat``.

Eight schemes, all round-to-nearest, in two families that differ only in how the range is chosen:

* ``asymmetric``  - per-tensor affine (the paper's "asymmetric per-layer"; the default),
* ``symmetric``   - per-tensor, zero-point 0, signed codes,
* ``per-channel`` - affine, one scale/zero-point per output channel (dim 0),
* ``per-channel-symmetric`` - one scale per output channel, zero-point 0, signed codes: the
  grid integer runtimes run fastest (ONNX Runtime's QLinearConv takes a per-channel zero-point
  other than 0 only in its slow reference kernel; quantize_static writes this grid too);
* ``asymmetric-mse``, ``symmetric-mse``, ``per-channel-mse``, ``per-channel-symmetric-mse`` - the
  same grids, with the range
  (per tensor, or per output channel) shrunk by the clipping ratio of ``CLIP_RATIOS`` that gives
  the least weight MSE: one outlier no longer stretches the grid for all the other weights.
  The grid holds ratio 1 (min/max itself) and a ratio only wins with a strictly smaller error, so
  the MSE is never above min/max's. This is BRECQ's ``mse`` range search (80 ratios, 1.00 down
  to 0.21) with the plain squared error, the QE the tool ranks bit-widths by; the reconstruction
  (recon/) uses these quantizers as its base.

The affine range always contains 0 (as PyTorch's observers do) so that zero is exactly
representable, and every scale is clamped from below: a constant tensor or an all-zero channel
(EfficientNet-Lite has five depthwise convs with one) then gives a finite, exact result instead of
0/0 = NaN.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch

from ..errors import InvalidWeightsError, MixQuantError
from .clip_search import row_sq_errors

MIN_BITS, MAX_BITS = 2, 8
# Smallest scale we allow; far below any real weight's step but keeps 0/0 out.
SCALE_EPS = torch.finfo(torch.float32).eps
MSE_SUFFIX = "-mse"
# Clipping ratios the MSE range search tries, largest first (ties keep the larger range).
CLIP_RATIOS = torch.tensor([1.0 - 0.01 * i for i in range(80)], dtype=torch.float32)


def base_scheme(name: str) -> str:
    """The min/max scheme with the same grid and storage: ``per-channel-mse`` -> ``per-channel``."""
    return name[: -len(MSE_SUFFIX)] if name.endswith(MSE_SUFFIX) else name


def is_mse(name: str) -> bool:
    return name.endswith(MSE_SUFFIX)


PER_CHANNEL_SCHEMES = ("per-channel", "per-channel-symmetric")
SYMMETRIC_SCHEMES = ("symmetric", "per-channel-symmetric")


def is_per_channel(name: str) -> bool:
    return base_scheme(name) in PER_CHANNEL_SCHEMES


def is_symmetric(name: str) -> bool:
    return base_scheme(name) in SYMMETRIC_SCHEMES


@dataclass(frozen=True)
class QuantMeta:
    """What ``dequantize`` needs: scale and zero-point (broadcastable to the codes) and bits."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    nbits: int
    scheme: str

    @property
    def signed(self) -> bool:
        return is_symmetric(self.scheme)


def check_bits(nbits: int) -> int:
    if not isinstance(nbits, int) or not MIN_BITS <= nbits <= MAX_BITS:
        raise MixQuantError(f"bit-width must be an integer from {MIN_BITS} to {MAX_BITS}, got {nbits!r}")
    return nbits


def check_finite(w: torch.Tensor, name: str = "tensor") -> None:
    if not torch.isfinite(w).all():
        bad = int((~torch.isfinite(w)).sum())
        raise InvalidWeightsError(f"layer '{name}' has {bad} NaN/Inf weight values; cannot quantize it")


def code_bounds(nbits: int, symmetric: bool) -> Tuple[int, int]:
    """Integer code range: affine 0 .. 2^b - 1; symmetric -2^(b-1) .. 2^(b-1) - 1 (2 bits: -2..1)."""
    return (-(2 ** (nbits - 1)), 2 ** (nbits - 1) - 1) if symmetric else (0, 2**nbits - 1)


def as_rows(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """[R, M]: one row per output channel (per-channel schemes), else the whole tensor as one row."""
    return w.reshape(w.shape[0], -1) if per_channel and w.dim() > 1 else w.reshape(1, -1)


def range_params(lo: torch.Tensor, hi: torch.Tensor, nbits: int, symmetric: bool):
    """Scale and zero-point of the grid over [lo, hi] (any shape, float32): affine ranges are
    widened to hold 0, symmetric ones are +-max(|lo|, |hi|) with zero-point 0."""
    qmin, qmax = code_bounds(nbits, symmetric)
    if symmetric:
        scale = torch.clamp(torch.maximum(lo.abs(), hi.abs()) / qmax, min=SCALE_EPS)
        return scale, torch.zeros_like(scale)
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    scale = torch.clamp((hi - lo) / qmax, min=SCALE_EPS)
    return scale, torch.clamp(torch.round(-lo / scale), qmin, qmax)


def codes_for(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, nbits: int, symmetric: bool):
    qmin, qmax = code_bounds(nbits, symmetric)
    return torch.clamp(torch.round(w / scale) + zero_point, qmin, qmax)


def mse_range_params(rows: torch.Tensor, nbits: int, symmetric: bool):
    """Per row of ``rows`` [R, M]: scale, zero-point and summed squared error [R] (float64) of the
    clipping ratio (``CLIP_RATIOS``) with the least error, all rows and ratios in one search
    (``clip_search``). The first ratio, 1, is min/max's grid; later ones win only when strictly better."""
    lo0, hi0 = torch.aminmax(rows, dim=1)
    ratios = CLIP_RATIOS.to(rows.device)[None, :]
    scale, zp = range_params(lo0[:, None] * ratios, hi0[:, None] * ratios, nbits, symmetric)  # [R, K]
    err = row_sq_errors(rows, scale, zp, *code_bounds(nbits, symmetric)).to(rows.device)
    best_err, k = err.min(dim=1)  # the first, i.e. largest, ratio among equal errors
    pick = lambda t: t.gather(1, k[:, None])[:, 0]  # noqa: E731
    return pick(scale), pick(zp), best_err


def _quantize(w: torch.Tensor, nbits: int, scheme: str):
    per_channel, symmetric = is_per_channel(scheme), is_symmetric(scheme)
    rows = as_rows(w, per_channel)
    if is_mse(scheme):
        scale, zp, _ = mse_range_params(rows, nbits, symmetric)
    else:
        lo, hi = torch.aminmax(rows, dim=1)
        scale, zp = range_params(lo, hi, nbits, symmetric)
    shape = (-1,) + (1,) * (w.dim() - 1) if per_channel and w.dim() > 1 else ()
    scale, zp = scale.reshape(shape), zp.reshape(shape)
    return codes_for(w, scale, zp, nbits, symmetric), QuantMeta(scale, zp, nbits, scheme)


def quantize_with_ratios(w: torch.Tensor, nbits: int, scheme: str, ratios: torch.Tensor):
    """The scheme's grid with its min/max range shrunk by the given clipping ``ratios`` (one per row
    of ``as_rows``: per output channel for per-channel schemes, one for per-tensor ones), as a
    calibration chose them (``recipe.WeightRanges``); ratio 1 is min/max itself."""
    check_bits(nbits)
    per_channel, symmetric = is_per_channel(scheme), is_symmetric(scheme)
    rows = as_rows(w, per_channel)
    ratios = ratios.to(device=rows.device, dtype=torch.float32).reshape(-1)
    if ratios.numel() != rows.shape[0]:
        raise MixQuantError(f"{ratios.numel()} clipping ratios for a grid of {rows.shape[0]} rows")
    if not torch.isfinite(ratios).all() or (ratios <= 0).any() or (ratios > 1).any():
        raise MixQuantError("clipping ratios must be finite and in (0, 1]")
    lo, hi = torch.aminmax(rows, dim=1)
    scale, zp = range_params(lo * ratios, hi * ratios, nbits, symmetric)
    shape = (-1,) + (1,) * (w.dim() - 1) if per_channel and w.dim() > 1 else ()
    scale, zp = scale.reshape(shape), zp.reshape(shape)
    return codes_for(w, scale, zp, nbits, symmetric), QuantMeta(scale, zp, nbits, scheme)


def fake_quantize_with_ratios(w: torch.Tensor, nbits: int, scheme: str, ratios: torch.Tensor) -> torch.Tensor:
    codes, meta = quantize_with_ratios(w, nbits, scheme, ratios)
    return dequantize(codes, meta)


def dequantize(codes: torch.Tensor, meta: QuantMeta) -> torch.Tensor:
    return (codes - meta.zero_point) * meta.scale


QuantizeFn = Callable[[torch.Tensor, int], Tuple[torch.Tensor, QuantMeta]]

QUANTIZERS: Dict[str, QuantizeFn] = {name: functools.partial(_quantize, scheme=name) for name in (
    "asymmetric", "symmetric", "per-channel", "per-channel-symmetric",
    "asymmetric-mse", "symmetric-mse", "per-channel-mse", "per-channel-symmetric-mse")}
MINMAX_QUANTIZERS = tuple(q for q in QUANTIZERS if not is_mse(q))
DEFAULT_QUANTIZER = "asymmetric"


def get_quantizer(name: str) -> QuantizeFn:
    try:
        return QUANTIZERS[name]
    except KeyError:
        raise MixQuantError(f"unknown quantizer '{name}'; choose one of {', '.join(QUANTIZERS)}") from None


def quantize(w: torch.Tensor, nbits: int, scheme: str = DEFAULT_QUANTIZER):
    """Quantize ``w`` to ``nbits`` with the named scheme; returns (codes as float tensor, meta)."""
    check_bits(nbits)
    return get_quantizer(scheme)(w, nbits)


def fake_quantize(w: torch.Tensor, nbits: int, scheme: str = DEFAULT_QUANTIZER) -> torch.Tensor:
    """Quantize then dequantize: the weights a simulated-quantized model computes with."""
    codes, meta = quantize(w, nbits, scheme)
    return dequantize(codes, meta)
