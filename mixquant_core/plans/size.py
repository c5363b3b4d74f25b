"""Size accounting: float32 model size, and the size under a per-layer bit-width plan.

A quantized weight costs ceil(numel * bits / 8) bytes of packed codes plus, per quantization group
(the whole tensor, or each output channel for ``per-channel`` and ``per-channel-mse``), a float32
scale (4 bytes) and, for the affine schemes, a uint8 zero-point (1 byte). An MSE-clipped quantizer
stores exactly what its min/max base scheme does (only the range differs). Everything else (biases, BatchNorm, buffers,
unquantized layers) stays float32. This is exactly what ``mixquant export`` writes.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from torch import nn

from ..models.layers import LayerInfo
from ..quant.quantizers import is_per_channel, is_symmetric

FLOAT_BYTES = 4
MB = 1e6


def float32_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer at 4 bytes per element."""
    n = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    return int(n) * FLOAT_BYTES


def groups(layer: LayerInfo, quantizer: str) -> int:
    return layer.shape[0] if is_per_channel(quantizer) else 1


def overhead_bytes(layer: LayerInfo, quantizer: str) -> int:
    per_group = FLOAT_BYTES + (0 if is_symmetric(quantizer) else 1)
    return groups(layer, quantizer) * per_group


def quantized_layer_bytes(layer: LayerInfo, bits: int, quantizer: str) -> int:
    return math.ceil(layer.params * int(bits) / 8) + overhead_bytes(layer, quantizer)


@dataclass(frozen=True)
class SizeSummary:
    float32_mb: float
    plan_mb: float
    compression: float  # float32 size / plan size
    avg_bits: float  # parameter-weighted over the quantized layers
    quantized_params: int

    def to_dict(self) -> dict:
        return asdict(self)


def plan_size(float_bytes: int, layers: Sequence[LayerInfo], bits: Sequence[int], quantizer: str) -> SizeSummary:
    if len(layers) != len(bits):
        raise ValueError("one bit-width per layer expected")
    params = np.array([layer.params for layer in layers], dtype=np.int64)
    quant_bytes = sum(quantized_layer_bytes(layer, b, quantizer) for layer, b in zip(layers, bits))
    total = float_bytes - int(params.sum()) * FLOAT_BYTES + quant_bytes
    avg = float(np.dot(params, np.asarray(bits, dtype=np.float64)) / params.sum()) if params.sum() else 0.0
    return SizeSummary(
        float32_mb=float_bytes / MB,
        plan_mb=total / MB,
        compression=float_bytes / total if total else float("inf"),
        avg_bits=avg,
        quantized_params=int(params.sum()),
    )


def params_per_bits(layers: Sequence[LayerInfo], bits: Sequence[int]) -> dict:
    """Parameters held at each bit-width, e.g. {8: 1200, 6: 340000}."""
    out: dict = {}
    for layer, b in zip(layers, bits):
        out[int(b)] = out.get(int(b), 0) + layer.params
    return dict(sorted(out.items(), reverse=True))
