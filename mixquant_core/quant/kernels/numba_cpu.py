"""Fast QE table kernels: every candidate bit-width of every layer from two reads of the weights.

The reference (``quant.qe._layer_qe_reference``) runs the quantizer once per layer and bit-width:
min/max, then about ten full-tensor ops, per bit. Here the whole model goes through two parallel
passes: one for every row's min/max and sum(w^2), then one in which each work item (at most
``BLOCK`` weights of one row, 16 KiB: it stays in L1) is quantized at all bit-widths before the
next is read. On CPU the loops are numba-compiled (AVX2-vectorised, items spread over the cores);
on CUDA ``triton_cuda`` runs the same two passes as two Triton launches; without numba (CPU) or
Triton (CUDA), a torch version does each layer in [rows, B, cols] slabs.

Float semantics, on purpose slightly different from the reference (compare within ~1e-4 relative):
  * ``round(w / s)`` is computed as ``rint(w * (1/s))``: where that differs it is a rounding tie
    flipped, and both sides of a tie have the same |error| (s/2), so the MSE barely moves;
  * ``clamp(round(x) + zp, 0, qmax) - zp`` is ``clamp(round(x), -zp, qmax - zp)`` (exact on
    integers in float32), skipped where the row's min and max show no code can leave the range;
  * ``e = code * s - w`` with ``code * s`` rounded first, as the reference does (no FMA), so a
    layer the reference quantizes exactly (QE 0) gets exactly 0 here too;
  * squared errors are summed in float32 within an item, items in float64; sum(w^2) in float64.
The scale and zero-point themselves are computed with exactly the reference's float32 formulas.
"""
from __future__ import annotations

import threading
from typing import List, Sequence

import numpy as np
import torch

from ..quantizers import SCALE_EPS, is_symmetric
from .work_items import code_range, items_for

# Items handed to a thread at a time: dynamic scheduling, so a core that another process holds
# does not leave half of the items waiting for it (this machine is shared).
_CHUNK_ITEMS = 16

try:  # numba is optional: without it kernels.qe_rows uses torch_rows
    import numba
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    HAVE_NUMBA = False

_EPS32 = np.float32(SCALE_EPS)
NUMBA_LOCK = threading.Lock()


# --- numba kernels (CPU) --------------------------------------------------------------------------
# All layers go through two parallel calls per model (stats, then errors) rather than two per
# layer: on a shared 2-core machine every parallel region can stall on a busy core, so fewer is
# much better. The kernels reach each layer's weights through its address (``_f32_at``), so no
# weight is copied into one buffer first. Each item's pointer is advanced to its first weight and
# its loops run from 0: with ``range(start, stop)`` numba cannot prove the index non-negative, keeps
# its negative-index wraparound select, and LLVM then loads the weights one lane at a time
# (vinsertps) instead of 8 at once; that alone made the error pass 2.5-3.7x slower.
if HAVE_NUMBA:
    from numba import types
    from numba.extending import intrinsic

    # reassoc lets LLVM vectorise the float sums. No "contract": fusing code*s - w into an FMA
    # would give the exact residual where the reference rounds code*s first, so a layer that the
    # reference quantizes exactly (QE 0: constant, all-zero) would get a tiny non-zero QE. No
    # nnan/ninf, so rint, min and max keep their IEEE meaning.
    _FM = {"reassoc", "nsz"}

    def _pointer_intrinsic(elem):
        @intrinsic
        def at(typingctx, addr):  # pragma: no cover - compiled
            sig = types.CPointer(elem)(types.int64)

            def codegen(context, builder, signature, args):
                return builder.inttoptr(args[0], context.get_value_type(types.CPointer(elem)))

            return sig, codegen

        return at

    _f32_at = _pointer_intrinsic(types.float32)  # float32* from a tensor's data_ptr()
    _i32_at = _pointer_intrinsic(types.int32)  # the same bits as int32, for min/max below

    @njit(inline="always")
    def _order_key(v):  # pragma: no cover - compiled
        """float32 bits -> int32 with the same order (an involution): integer min/max vectorise
        in LLVM where float min/max (NaN-aware) do not."""
        return v ^ ((v >> 31) & np.int32(0x7FFFFFFF))

    @njit(parallel=True, fastmath=_FM, cache=True, nogil=True)
    def _item_stats(ptrs, layer, start, stop):  # pragma: no cover - compiled
        """min, max and sum of squares of each work item (a slice of one row of one layer).
        NaN/Inf are not looked for here: they make the sum of squares non-finite."""
        n = layer.shape[0]
        lo = np.empty(n, np.int32)
        hi = np.empty(n, np.int32)
        sq = np.empty(n, np.float64)
        for k in prange(n):
            m = stop[k] - start[k]
            w = numba.carray(_f32_at(ptrs[layer[k]] + 4 * start[k]), (m,))
            bits = numba.carray(_i32_at(ptrs[layer[k]] + 4 * start[k]), (m,))
            mn = np.int32(0x7FFFFFFF)
            mx = np.int32(-0x80000000)
            acc = 0.0  # float64, as the reference's mean(w.double() ** 2): tiny w^2 must not flush to 0
            for i in range(m):
                key = _order_key(bits[i])
                mn = min(mn, key)
                mx = max(mx, key)
                x = np.float64(w[i])
                acc += x * x
            lo[k] = _order_key(mn)
            hi[k] = _order_key(mx)
            sq[k] = acc
        return lo.view(np.float32), hi.view(np.float32), sq

    @njit(fastmath=_FM | {"contract"}, cache=True)
    def _add_square(acc, e):  # pragma: no cover - compiled
        """acc + e*e as one FMA: contraction is harmless here (unlike in code*s - w), and LLVM
        inlines this keeping each instruction's own flags."""
        return acc + e * e

    @njit(parallel=True, fastmath=_FM, cache=True, nogil=True)
    def _item_sq_errors(ptrs, layer, start, stop, row, scale, inv_scale, cmin, cmax, clamp):  # pragma: no cover
        """Sum of squared quantization errors of each work item at every bit-width [items, B].
        ``clamp[r, j]`` is False where no code of row r can leave its range at bit-width j (known
        from the row's min/max): that loop then skips the two clamp instructions."""
        n = layer.shape[0]
        nb = scale.shape[1]
        out = np.empty((n, nb), np.float64)
        for k in prange(n):
            m = stop[k] - start[k]
            w = numba.carray(_f32_at(ptrs[layer[k]] + 4 * start[k]), (m,))
            r = row[k]
            for j in range(nb):
                s = scale[r, j]
                inv = inv_scale[r, j]
                acc = np.float32(0.0)
                if clamp[r, j]:
                    a = cmin[r, j]
                    c = cmax[r, j]
                    for i in range(m):
                        x = w[i]
                        q = min(max(np.rint(x * inv), a), c)
                        acc = _add_square(acc, q * s - x)
                else:
                    for i in range(m):
                        x = w[i]
                        acc = _add_square(acc, np.rint(x * inv) * s - x)
                out[k, j] = acc
        return out


if HAVE_NUMBA:
    @njit(cache=True, nogil=True)
    def _row_params(lo, hi, qmin, qmax, symmetric):  # pragma: no cover - compiled
        """``params_for`` and the clamp test below in one pass over [rows, B]: per-channel models
        have ~20,000 rows, where numpy's ~15 whole-array passes took longer than the error pass.
        The same float32 steps as ``affine_params`` / ``symmetric_params`` (a test compares them)."""
        rows, nb = lo.shape[0], qmax.shape[0]
        zero = np.float32(0.0)
        scale = np.empty((rows, nb), np.float32)
        inv = np.empty((rows, nb), np.float32)
        cmin = np.empty((rows, nb), np.float32)
        cmax = np.empty((rows, nb), np.float32)
        clamp = np.empty((rows, nb), np.bool_)
        for r in range(rows):
            lo_r, hi_r = lo[r], hi[r]
            for j in range(nb):
                if symmetric:
                    s = max(max(abs(lo_r), abs(hi_r)) / qmax[j], _EPS32)
                    a, c = qmin[j], qmax[j]
                else:
                    lo0, hi0 = min(lo_r, zero), max(hi_r, zero)
                    s = max((hi0 - lo0) / qmax[j], _EPS32)
                    zp = min(max(np.rint(-lo0 / s), zero), qmax[j])
                    a, c = -zp, qmax[j] - zp
                v = np.float32(1.0) / s
                scale[r, j], inv[r, j], cmin[r, j], cmax[r, j] = s, v, a, c
                # x -> rint(x * inv) is monotonic, so the row's min and max give the extreme codes
                clamp[r, j] = not (np.rint(lo_r * v) >= a and np.rint(hi_r * v) <= c)
        return scale, inv, cmin, cmax, clamp


def row_params(quantizer: str, lo: np.ndarray, hi: np.ndarray, bits: Sequence[int]):
    """scale, 1/scale, clamp bounds and "clamp needed" [rows, B] for the error pass."""
    qmin, qmax = code_range(quantizer, bits)
    return _row_params(lo.astype(np.float32), hi.astype(np.float32), qmin, qmax, is_symmetric(quantizer))


def numba_rows(weights: List[torch.Tensor], bits: Sequence[int], quantizer: str):
    items = items_for(weights, quantizer)
    ptrs = np.array([w.data_ptr() for w in weights], dtype=np.int64)
    with numba.parallel_chunksize(_CHUNK_ITEMS):
        lo, hi, sq = _item_stats(ptrs, items.layer, items.start, items.stop)
    lo_row = np.minimum.reduceat(lo, items.row_first_item)
    hi_row = np.maximum.reduceat(hi, items.row_first_item)
    mean_sq = np.add.reduceat(sq, items.layer_first_item) / items.numel
    ok = np.isfinite(mean_sq)
    scale, inv, cmin, cmax, clamp = row_params(quantizer, lo_row, hi_row, bits)  # NaN/Inf rows: ``ok`` flags them
    with numba.parallel_chunksize(_CHUNK_ITEMS):
        err = _item_sq_errors(ptrs, items.layer, items.start, items.stop, items.row, scale, inv, cmin, cmax, clamp)
    qe = np.add.reduceat(err, items.layer_first_item, axis=0) / items.numel[:, None]
    qe[~ok] = np.nan
    return qe, mean_sq, ok
