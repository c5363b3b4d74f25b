"""AdaRound's learned-rounding weight parametrization, on the base quantizer's grid (any of
``quant.quantizers``; by default ``per-channel-mse``, the MSE-clipped affine range per output
channel); its result is a ``quant.codes.QuantizedLayer`` (integer codes + scale + zero-point).

The block-by-block fitting (BRECQ) that drives it is reconstruct.py.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..quant.codes import QuantizedLayer, unsigned_grid
from ..quant.quantizers import QuantMeta, dequantize

ZETA, GAMMA = 1.1, -0.1  # rectified sigmoid stretch (AdaRound)


class AdaRoundWeight(nn.Module):
    """Parametrization: the layer's weight becomes its (soft or hard) quantized version."""

    def __init__(self, w: torch.Tensor, nbits: int, scheme: str, ratios: Optional[torch.Tensor] = None,
                 start: Optional[torch.Tensor] = None):
        """The grid is ``w``'s (with ``ratios``: the calibrated clipping of loss-aware ranges); the
        rounding starts from ``start`` (default ``w``): GPTQ's updated weights (recon/gptq.py),
        whose nearest codes are GPTQ's, make the start GPTQ's rounding."""
        super().__init__()
        self.nbits, self.scheme, self.qmax = nbits, scheme, 2**nbits - 1
        _, scale, zp = unsigned_grid(w, nbits, scheme, ratios)
        w = (w if start is None else start.to(w.device)).detach().float()
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zp)
        self.register_buffer("floor", torch.floor(w / scale))
        rest = (w / scale - self.floor).clamp(0.0, 1.0)
        self.alpha = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
        self.register_buffer("nearest_up", (rest >= 0.5).float())
        self.mode = "soft"  # soft | hard | nearest
        self._h: Optional[torch.Tensor] = None

    def h(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def codes(self, mode: Optional[str] = None) -> torch.Tensor:
        mode = mode or self.mode
        if mode == "soft":
            up = self.h()
        elif mode == "hard":
            up = (self.alpha >= 0).float()
        else:  # nearest: plain rounding on the same grid, the baseline a block report compares to
            up = self.nearest_up
        return torch.clamp(self.floor + up + self.zero_point, 0, self.qmax)

    def round_loss(self, beta: float) -> torch.Tensor:
        h = self._h if self._h is not None else self.h()  # reuse this step's forward
        return (1 - (2 * h - 1).abs().pow(beta)).sum()

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        if self.mode == "soft":
            self._h = self.h()
            codes = torch.clamp(self.floor + self._h + self.zero_point, 0, self.qmax)
            return (codes - self.zero_point) * self.scale
        return dequantize(self.codes(), QuantMeta(self.scale, self.zero_point, self.nbits, self.scheme))

    def result(self) -> QuantizedLayer:
        codes = self.codes("hard").detach().to(torch.uint8)
        return QuantizedLayer(codes, self.scale.detach().clone(), self.zero_point.detach().clone(), self.nbits, self.scheme)
