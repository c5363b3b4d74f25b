"""The QE table on CUDA: two Triton launches for the whole model, whatever its layer count.

Launch 1 reads every work item (a slice of at most ``BLOCK`` weights of one row of one layer;
a row is the whole layer for per-tensor schemes, an output channel for per-channel) once and
writes its min, max and sum of squares. A few torch ops reduce those per row and compute the
scale and clamp bounds with the reference's float32 formulas ([rows, B], tiny). Launch 2 reads
every item once more and sums the squared error at all bit-widths while the slice is in registers.
Layers are reached through a table of addresses, so no weight is copied or concatenated.

Same float semantics as the CPU kernels (see ``numba_cpu``): rint(w * (1/s)) instead of
round(w / s), clamp on the code minus zero-point, float32 sums per item and float64 across items.

Triton is imported only when this module is (``kernels.qe_rows`` imports it for CUDA weights only);
``available()`` says whether it can run here, and the caller falls back to torch otherwise.
"""
from __future__ import annotations

import os
from typing import List, Sequence

import numpy as np
import torch

from ..quantizers import SCALE_EPS, is_per_channel, is_symmetric

BLOCK = 4096  # weights per program for per-tensor schemes
BLOCK_PER_CHANNEL = 1024  # rows (output channels) are short: 9 to a few thousand weights

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - CPU-only installs
    HAVE_TRITON = False


def available() -> bool:
    return HAVE_TRITON and torch.cuda.is_available()


if HAVE_TRITON:

    @triton.jit
    def _stats_kernel(ptrs_ptr, layer_ptr, start_ptr, stop_ptr, lo_ptr, hi_ptr, sq_ptr, BLOCK: tl.constexpr):
        k = tl.program_id(0)
        base = tl.load(ptrs_ptr + tl.load(layer_ptr + k)).to(tl.pointer_type(tl.float32))
        start = tl.load(start_ptr + k)
        stop = tl.load(stop_ptr + k)
        offs = start + tl.arange(0, BLOCK)
        mask = offs < stop
        x = tl.load(base + offs, mask=mask, other=0.0)
        tl.store(lo_ptr + k, tl.min(tl.where(mask, x, float("inf")), axis=0))
        tl.store(hi_ptr + k, tl.max(tl.where(mask, x, float("-inf")), axis=0))
        x64 = x.to(tl.float64)  # as the reference's mean(w.double() ** 2): tiny w^2 must not flush to 0
        tl.store(sq_ptr + k, tl.sum(x64 * x64, axis=0))

    @triton.jit
    def _sq_error_kernel(ptrs_ptr, layer_ptr, start_ptr, stop_ptr, row_ptr, scale_ptr, cmin_ptr, cmax_ptr, out_ptr,
                         NB: tl.constexpr, BLOCK: tl.constexpr, MUL_RN: tl.constexpr):
        k = tl.program_id(0)
        base = tl.load(ptrs_ptr + tl.load(layer_ptr + k)).to(tl.pointer_type(tl.float32))
        start = tl.load(start_ptr + k)
        stop = tl.load(stop_ptr + k)
        row = tl.load(row_ptr + k)
        offs = start + tl.arange(0, BLOCK)
        mask = offs < stop
        x = tl.load(base + offs, mask=mask, other=0.0)
        for j in tl.static_range(NB):
            s = tl.load(scale_ptr + row * NB + j)
            a = tl.load(cmin_ptr + row * NB + j)
            c = tl.load(cmax_ptr + row * NB + j)
            # round half to even: adding and removing 1.5 * 2^23 (|x / s| stays far below 2^22,
            # since the scale spans the whole range) - exact, and the same on every backend
            y = x * (1.0 / s)
            q = (y + 12582912.0) - 12582912.0
            q = tl.minimum(tl.maximum(q, a), c)
            # code * s rounded on its own, as the reference does: an FMA (which ptxas would make of
            # q * s - x) gives the exact residual, and layers the reference quantizes exactly
            # (QE 0) would get a tiny non-zero QE
            if MUL_RN:
                d = libdevice.mul_rn(q, s)
            else:  # Triton's CPU interpreter (tests): numpy does not fuse
                d = q * s
            e = tl.where(mask, d - x, 0.0)
            tl.store(out_ptr + k * NB + j, tl.sum(e * e, axis=0))


def _params(quantizer: str, lo: torch.Tensor, hi: torch.Tensor, bits: Sequence[int]):
    """The reference quantizers' scale and code bounds for rows' lo/hi [R], as [R, B] float32."""
    b = torch.tensor(bits, dtype=torch.float32, device=lo.device)[None, :]
    lo, hi = lo[:, None], hi[:, None]
    if is_symmetric(quantizer):
        qmax, qmin = 2 ** (b - 1) - 1, -(2 ** (b - 1))
        scale = torch.clamp(torch.maximum(lo.abs(), hi.abs()) / qmax, min=SCALE_EPS)
        return scale, qmin.expand_as(scale).contiguous(), qmax.expand_as(scale).contiguous()
    qmax = 2 ** b - 1
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = torch.clamp((hi - lo) / qmax, min=SCALE_EPS)
    zp = torch.clamp(torch.round(-lo / scale), min=torch.zeros_like(qmax), max=qmax)
    return scale, -zp, qmax - zp


def _on_device(items, device):
    """The work-item table on the GPU, copied once per model architecture and device."""
    key = str(device)
    if key not in items.device_copies:
        table = torch.from_numpy(np.stack([items.layer, items.start, items.stop, items.row])).to(device)
        n_rows, n_layers = len(items.row_first_item), len(items.layer_first_item)
        items.device_copies[key] = (*table.unbind(0), n_rows, n_layers)
    return items.device_copies[key]


def qe_rows(weights: List[torch.Tensor], bits: Sequence[int], quantizer: str):
    """QE [L, B], mean(w^2) [L], ok [L] for contiguous float32 CUDA weights (see ``numba_cpu``)."""
    from .work_items import items_for

    device = weights[0].device
    block = BLOCK_PER_CHANNEL if is_per_channel(quantizer) else BLOCK
    items = items_for(weights, quantizer, block)
    layer_d, start_d, stop_d, row_d, n_rows, n_layers = _on_device(items, device)
    ptrs = torch.tensor([w.data_ptr() for w in weights], dtype=torch.int64).to(device, non_blocking=True)
    n_items, nb = len(items.layer), len(bits)

    lo = torch.empty(n_items, dtype=torch.float32, device=device)
    hi = torch.empty_like(lo)
    sq = torch.empty(n_items, dtype=torch.float64, device=device)
    _stats_kernel[(n_items,)](ptrs, layer_d, start_d, stop_d, lo, hi, sq, BLOCK=block)
    lo_row = torch.full((n_rows,), float("inf"), device=device).scatter_reduce_(0, row_d, lo, "amin")
    hi_row = torch.full((n_rows,), float("-inf"), device=device).scatter_reduce_(0, row_d, hi, "amax")
    scale, cmin, cmax = (p.contiguous() for p in _params(quantizer, lo_row, hi_row, bits))

    err = torch.empty((n_items, nb), dtype=torch.float32, device=device)
    _sq_error_kernel[(n_items,)](ptrs, layer_d, start_d, stop_d, row_d, scale, cmin, cmax, err, NB=nb, BLOCK=block,
                                        MUL_RN=os.environ.get("TRITON_INTERPRET") != "1")
    sums = torch.zeros((n_layers, nb + 1), dtype=torch.float64, device=device)
    sums[:, :nb].index_add_(0, layer_d, err.double())
    sums[:, nb].index_add_(0, layer_d, sq)
    sums = sums.cpu().numpy() / items.numel[:, None]  # the one sync
    qe, mean_sq = sums[:, :nb], sums[:, nb]
    ok = np.isfinite(mean_sq)
    qe[~ok] = np.nan
    return qe, mean_sq, ok
