"""A layer's integer codes on a quantizer's grid: ``QuantizedLayer`` (codes + scale + zero-point),
the unsigned grid every stored code uses, and round-to-nearest codes for a whole plan's layers.

Plain rounding lives here, beside the quantizers it rounds with, so a round-to-nearest export needs
only quant/; the learned rounding (recon/adaround.py) produces the same ``QuantizedLayer`` on the
same grid, so export/ stores and loads both alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import nn

from ..models.layers import layer_weight
from .quantizers import QuantMeta, check_finite, dequantize, quantize, quantize_with_ratios
from .recipe import Quantizer, ratios_of, scheme_of


@dataclass
class QuantizedLayer:
    """One layer's integer codes (uint8, weight's shape) and its affine parameters."""

    codes: torch.Tensor
    scale: torch.Tensor  # float32, broadcastable to codes ([C,1,..] per channel, [] per tensor)
    zero_point: torch.Tensor  # float32 integral values, same shape as scale
    nbits: int
    scheme: str

    @property
    def meta(self) -> QuantMeta:
        return QuantMeta(self.scale, self.zero_point, self.nbits, self.scheme)

    def weight(self) -> torch.Tensor:
        return dequantize(self.codes.float(), self.meta)


def unsigned_grid(w: torch.Tensor, nbits: int, scheme: str, ratios: Optional[torch.Tensor] = None):
    """Round-to-nearest codes of ``quantizers.quantize`` (or, with calibrated clipping ``ratios``,
    ``quantize_with_ratios``) as unsigned 0 .. 2^b - 1, with scale and zero-point: symmetric codes
    are offset by 2^(b-1) (the zero-point), as the export stores them."""
    w = w.detach().float()
    codes, meta = quantize(w, nbits, scheme) if ratios is None else quantize_with_ratios(w, nbits, scheme, ratios)
    if meta.signed:
        off = 2 ** (nbits - 1)
        return codes + off, meta.scale, torch.full_like(meta.scale, float(off))
    return codes, meta.scale, meta.zero_point


def nearest_layers(model: nn.Module, bits: Dict[str, int], quantizer: Quantizer) -> Dict[str, QuantizedLayer]:
    """Round-to-nearest codes of the project's quantizers (quantizers.quantize), as QuantizedLayers;
    ``quantizer`` a scheme name or a plan's Recipe, whose calibrated clipping ratios (loss-aware
    ranges) then set each layer's grid, as ``recipe.quantize_layer`` does for evaluation."""
    out = {}
    for name, b in bits.items():
        w = layer_weight(model, name).detach().float().cpu()
        check_finite(w, name)
        out[name] = grid_layer(layer_grid(quantizer, name, w, int(b)), int(b), quantizer)
    return out


def grid_layer(grid, bits: int, quantizer: Quantizer) -> QuantizedLayer:
    """Codes on a grid, (codes, scale, zero-point) as ``layer_grid`` answers (its nearest codes, or
    another rounding's on the same grid), as the QuantizedLayer of ``bits`` in ``quantizer``'s scheme."""
    codes, scale, zp = grid
    return QuantizedLayer(codes.to(torch.uint8), scale.float(), zp.float(), int(bits), scheme_of(quantizer))


def layer_grid(quantizer: Quantizer, name: str, w: torch.Tensor, bits: int):
    """The grid ``quantize_layer`` rounds layer ``name`` to, as ``unsigned_grid``'s
    (round-to-nearest codes, scale, zero-point): what a rounding other than the nearest (GPTQ,
    AdaRound) keeps fixed while it chooses each weight's code."""
    return unsigned_grid(w, int(bits), scheme_of(quantizer), ratios_of(quantizer, name, bits))
