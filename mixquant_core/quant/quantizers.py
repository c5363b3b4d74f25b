"""Weight quantizers as small pure functions: ``quantize(w, nbits) -> (codes, meta)`` and
``dequantize(codes, meta) -> w_hat``.

Three schemes, all round-to-nearest:

* ``asymmetric``  - per-tensor affine (the paper's "asymmetric per-layer"; the default),
* ``symmetric``   - per-tensor, zero-point 0, signed codes,
* ``per-channel`` - affine, one scale/zero-point per output channel (dim 0).

The affine range always contains 0 (as PyTorch's observers do) so that zero is exactly
representable, and every scale is clamped from below: a constant tensor or an all-zero channel
(EfficientNet-Lite has five depthwise convs with one) then gives a finite, exact result instead of
0/0 = NaN.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch

from ..errors import InvalidWeightsError, MixQuantError

MIN_BITS, MAX_BITS = 2, 8
# Smallest scale we allow; far below any real weight's step but keeps 0/0 out.
SCALE_EPS = torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class QuantMeta:
    """What ``dequantize`` needs: scale and zero-point (broadcastable to the codes) and bits."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    nbits: int
    scheme: str

    @property
    def signed(self) -> bool:
        return self.scheme == "symmetric"


def check_bits(nbits: int) -> int:
    if not isinstance(nbits, int) or not MIN_BITS <= nbits <= MAX_BITS:
        raise MixQuantError(f"bit-width must be an integer from {MIN_BITS} to {MAX_BITS}, got {nbits!r}")
    return nbits


def check_finite(w: torch.Tensor, name: str = "tensor") -> None:
    if not torch.isfinite(w).all():
        bad = int((~torch.isfinite(w)).sum())
        raise InvalidWeightsError(f"layer '{name}' has {bad} NaN/Inf weight values; cannot quantize it")


def _reduce_dims(w: torch.Tensor, per_channel: bool) -> Tuple[int, ...] | None:
    return tuple(range(1, w.dim())) if per_channel and w.dim() > 1 else None


def _affine_params(w: torch.Tensor, nbits: int, per_channel: bool):
    qmax = 2**nbits - 1
    dims = _reduce_dims(w, per_channel)
    if dims is None:
        lo, hi = w.min(), w.max()
    else:
        lo, hi = w.amin(dim=dims, keepdim=True), w.amax(dim=dims, keepdim=True)
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    scale = torch.clamp((hi - lo) / qmax, min=SCALE_EPS)
    zero_point = torch.clamp(torch.round(-lo / scale), 0, qmax)
    return scale, zero_point, 0, qmax


def _quantize_affine(w: torch.Tensor, nbits: int, per_channel: bool, scheme: str):
    scale, zp, qmin, qmax = _affine_params(w, nbits, per_channel)
    codes = torch.clamp(torch.round(w / scale) + zp, qmin, qmax)
    return codes, QuantMeta(scale, zp, nbits, scheme)


def quantize_asymmetric(w: torch.Tensor, nbits: int):
    return _quantize_affine(w, nbits, per_channel=False, scheme="asymmetric")


def quantize_per_channel(w: torch.Tensor, nbits: int):
    return _quantize_affine(w, nbits, per_channel=True, scheme="per-channel")


def quantize_symmetric(w: torch.Tensor, nbits: int):
    qmax = 2 ** (nbits - 1) - 1  # 2 bits -> codes {-2,-1,0,1}, |w|max maps to 1
    qmin = -(2 ** (nbits - 1))
    scale = torch.clamp(w.abs().max() / qmax, min=SCALE_EPS)
    codes = torch.clamp(torch.round(w / scale), qmin, qmax)
    return codes, QuantMeta(scale, torch.zeros_like(scale), nbits, "symmetric")


def dequantize(codes: torch.Tensor, meta: QuantMeta) -> torch.Tensor:
    return (codes - meta.zero_point) * meta.scale


QuantizeFn = Callable[[torch.Tensor, int], Tuple[torch.Tensor, QuantMeta]]

QUANTIZERS: Dict[str, QuantizeFn] = {
    "asymmetric": quantize_asymmetric,
    "symmetric": quantize_symmetric,
    "per-channel": quantize_per_channel,
}
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
