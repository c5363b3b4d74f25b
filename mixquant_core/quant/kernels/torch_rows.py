"""The QE table with torch ops, a layer at a time in [rows, B, cols] slabs: the fallback where
numba (CPU) or Triton (CUDA) is missing, and the numpy form of the reference's scale formulas."""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch

from ..quantizers import SCALE_EPS, as_rows, is_per_channel, is_symmetric, mse_range_params
from .work_items import code_range

_EPS32 = np.float32(SCALE_EPS)


def affine_params(lo: np.ndarray, hi: np.ndarray, bits: Sequence[int]):
    """The reference's ``_affine_params`` for lo/hi [R] and bits [B], all float32 like torch's.

    Returns scale, and the clamp bounds of ``round(w/scale)``: [-zp, qmax - zp], each [R, B]."""
    qmax = code_range("asymmetric", bits)[1][None, :]
    lo = np.minimum(lo.astype(np.float32), np.float32(0))[:, None]
    hi = np.maximum(hi.astype(np.float32), np.float32(0))[:, None]
    scale = np.maximum((hi - lo) / qmax, _EPS32)
    zp = np.clip(np.rint(-lo / scale), np.float32(0), qmax).astype(np.float32)
    return scale.astype(np.float32), (-zp).astype(np.float32), (qmax - zp).astype(np.float32)


def symmetric_params(lo: np.ndarray, hi: np.ndarray, bits: Sequence[int]):
    """The reference's symmetric scheme: scale = max|w| / (2^(b-1) - 1), codes in [-2^(b-1), 2^(b-1)-1]."""
    qmin, qmax = (c[None, :] for c in code_range("symmetric", bits))
    absmax = np.maximum(np.abs(lo.astype(np.float32)), np.abs(hi.astype(np.float32)))[:, None]
    scale = np.maximum(absmax / qmax, _EPS32).astype(np.float32)
    rows = scale.shape[0]
    return scale, np.broadcast_to(qmin, (rows, len(bits))).copy(), np.broadcast_to(qmax, (rows, len(bits))).copy()


def params_for(quantizer: str, lo: np.ndarray, hi: np.ndarray, bits: Sequence[int]):
    return symmetric_params(lo, hi, bits) if is_symmetric(quantizer) else affine_params(lo, hi, bits)


_TORCH_CHUNK = 1 << 16


def layer_rows(w: torch.Tensor, bits: Sequence[int], quantizer: str) -> Tuple[np.ndarray, float, bool]:
    w2 = as_rows(w, is_per_channel(quantizer))
    lo, hi = torch.aminmax(w2, dim=1)
    sumsq = float(torch.sum(w2.double() ** 2))
    if not np.isfinite(sumsq):
        return np.full(len(bits), np.nan), sumsq, False
    scale, cmin, cmax = (torch.from_numpy(p).to(w.device) for p in
                         params_for(quantizer, lo.cpu().numpy(), hi.cpu().numpy(), bits))
    inv = 1.0 / scale
    rows, m = w2.shape
    total = torch.zeros(len(bits), dtype=torch.float64, device=w.device)
    step = max(1, _TORCH_CHUNK // max(m, 1))  # rows per slab
    for r0 in range(0, rows, step):
        x = w2[r0:r0 + step][:, None, :]  # [r, 1, m]
        sl = slice(r0, r0 + step)
        q = torch.round(x * inv[sl, :, None])
        q = torch.maximum(torch.minimum(q, cmax[sl, :, None]), cmin[sl, :, None])
        e = q * scale[sl, :, None] - x
        total += (e * e).sum(dim=(0, 2), dtype=torch.float64)
    return (total / w.numel()).cpu().numpy(), sumsq / w.numel(), True


def mse_layer_rows(w: torch.Tensor, bits: Sequence[int], quantizer: str) -> Tuple[np.ndarray, float, bool]:
    """QE of an MSE-clipped quantizer: the range search itself (``quantizers.mse_range_params``,
    vectorised over rows and clipping ratios) already sums each row's error at its best ratio,
    so the QE is that sum over the rows. On any device; about 60x the work of min/max (80 ratios)."""
    w2 = as_rows(w, is_per_channel(quantizer))
    sumsq = float(torch.sum(w2.double() ** 2))
    if not np.isfinite(sumsq):
        return np.full(len(bits), np.nan), sumsq, False
    total = [float(mse_range_params(w2, int(b), is_symmetric(quantizer))[2].sum()) for b in bits]
    return np.array(total) / w.numel(), sumsq / w.numel(), True
