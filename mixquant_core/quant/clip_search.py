"""The inner loop of the range searches: the summed squared error of every row of a layer under
every candidate grid (clipping ratio) at once, plain (the MSE search, ``quantizers.mse_range_params``)
or weighted per weight (the loss-aware search, ``loss_ranges``: sum F * (w - q(w))**2).

numba where installed: one fused pass per (row, candidate), spread over the cores, instead of
about nine whole-tensor torch ops over [rows, ratios, cols] chunks (measured: benchmarks/README.md).
Both compute each weight's error with the quantizer's own float32 steps (``round(w / s) + zp``,
clamped, ``(code - zp) * s - w``, squared in float32) and sum the squares in float64, so the
two differ only in summation order; a weighted error multiplies each float32 square by its float64
weight before summing, in both. Imports nothing from quant/ (quantizers imports it).
"""
from __future__ import annotations

import threading
from typing import Optional

import numpy as np
import torch

try:  # numba is optional: without it the torch version runs
    import numba
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    HAVE_NUMBA = False

_TORCH_CHUNK = 1 << 20  # weights x candidates per torch step (a few MB of temporaries)
_LOCK = threading.Lock()  # one search at a time: its parallel loop already uses every core
_NO_WEIGHTS = np.ones((1, 1), np.float64)  # the plain search's stand-in for the weights it does not read

if HAVE_NUMBA:
    # reassoc lets LLVM vectorise the float64 sum; no "contract" (an FMA in (q - z) * s - x would
    # change the error of a weight the quantizer reproduces exactly), as in kernels/numba_cpu.py
    @njit(parallel=True, fastmath={"reassoc", "nsz"}, cache=True, nogil=True)
    def _numba_kernel(rows, weights, scale, zp, qmin, qmax, weighted):  # pragma: no cover - compiled
        n_rows, m = rows.shape
        k_all = scale.shape[1]
        out = np.empty((n_rows, k_all), np.float64)
        for t in prange(n_rows * k_all):  # (row, candidate) pairs: per-tensor layers have one row
            r = t // k_all
            k = t - r * k_all
            s = scale[r, k]
            z = zp[r, k]
            acc = 0.0
            for i in range(m):
                x = rows[r, i]
                q = min(max(np.rint(x / s) + z, qmin), qmax)
                e = (q - z) * s - x
                if weighted:  # loop-invariant: compiled as two loops
                    acc += weights[r, i] * (e * e)
                else:
                    acc += e * e
            out[r, k] = acc
        return out

    def _numba_errors(rows, scale, zp, qmin, qmax):
        """The plain (unweighted) errors of the compiled kernel."""
        return _numba_kernel(rows, _NO_WEIGHTS, scale, zp, qmin, qmax, False)


def _torch_errors(rows: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: float, qmax: float,
                  weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    out = torch.empty(scale.shape, dtype=torch.float64, device=rows.device)
    step = max(1, _TORCH_CHUNK // max(rows.numel(), 1))
    for k0 in range(0, scale.shape[1], step):
        s, z, x = scale[:, k0:k0 + step, None], zp[:, k0:k0 + step, None], rows[:, None, :]
        w_hat = (torch.clamp(torch.round(x / s) + z, qmin, qmax) - z) * s
        sq = (w_hat - x).square()
        if weights is not None:
            sq = sq.double() * weights[:, None, :]
        out[:, k0:k0 + step] = sq.sum(-1, dtype=torch.float64)
    return out


def row_sq_errors(rows: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int,
                  weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[R, K] float64: sum over each row of ``rows`` [R, M] of the squared error under grid
    (``scale``, ``zp``) [R, K] with codes clamped to [qmin, qmax]; with ``weights`` [R, M]
    (float64, e.g. the Fisher diagonal), each weight's square is multiplied by its weight first."""
    if weights is not None:
        weights = weights.to(device=rows.device, dtype=torch.float64)
    if HAVE_NUMBA and rows.device.type == "cpu" and rows.numel() * scale.shape[1] >= 4096:
        args = (rows.contiguous().numpy(), scale.contiguous().numpy(), zp.contiguous().numpy())
        w = _NO_WEIGHTS if weights is None else weights.contiguous().numpy()
        with _LOCK:
            return torch.from_numpy(_numba_kernel(args[0], w, *args[1:], np.float32(qmin), np.float32(qmax),
                                                  weights is not None))
    return _torch_errors(rows, scale, zp, float(qmin), float(qmax), weights)
