"""Fast QE table kernels: every candidate bit-width of every layer from two reads of the weights.

The reference (``qe._layer_qe_reference``) runs the quantizer once per layer and bit-width:
min/max, then about ten full-tensor ops, per bit. Here the whole model goes through two parallel
passes: one for every row's min/max and sum(w^2), then one in which each work item (at most
``BLOCK`` weights of one row, 16 KiB: it stays in L1) is quantized at all bit-widths before the
next is read. On CPU the loops are numba-compiled (AVX2-vectorised, items spread over the cores);
on CUDA ``qe_triton`` runs the same two passes as two Triton launches; without numba (CPU) or
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

import functools
import math
import threading
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import numpy as np
import torch

from .quantizers import SCALE_EPS

BLOCK = 4096  # weights per work item: 16 KiB of float32, L1-resident while all bit-widths run
# Items handed to a thread at a time: dynamic scheduling, so a core that another process holds
# does not leave half of the items waiting for it (this machine is shared).
_CHUNK_ITEMS = 16

try:  # numba is optional: without it the torch path below is used
    import numba
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    HAVE_NUMBA = False

_EPS32 = np.float32(SCALE_EPS)
_NUMBA_LOCK = threading.Lock()


# --- quantizer parameters, vectorised over rows and bit-widths ------------------------------------
def code_range(quantizer: str, bits: Sequence[int]):
    """(qmin, qmax) [B] float32: the integer codes of each bit-width, as the reference's quantizers
    use them (affine: 0 .. 2^b - 1, symmetric: -2^(b-1) .. 2^(b-1) - 1)."""
    b = np.asarray(bits, dtype=np.float64)
    if quantizer == "symmetric":
        return (-(2.0 ** (b - 1))).astype(np.float32), (2.0 ** (b - 1) - 1).astype(np.float32)
    return np.zeros(len(b), np.float32), (2.0 ** b - 1).astype(np.float32)


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
    return symmetric_params(lo, hi, bits) if quantizer == "symmetric" else affine_params(lo, hi, bits)


def rows_view(w: torch.Tensor, quantizer: str) -> torch.Tensor:
    """[R, M]: one row per output channel for per-channel, the whole tensor as one row otherwise."""
    if quantizer == "per-channel" and w.dim() > 1:
        return w.reshape(w.shape[0], -1)
    return w.reshape(1, -1)


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
    return _row_params(lo.astype(np.float32), hi.astype(np.float32), qmin, qmax, quantizer == "symmetric")


def row_shape(shape: Tuple[int, ...], quantizer: str) -> Tuple[int, int]:
    """(rows, weights per row) of a layer: output channels for per-channel, else one row."""
    numel = math.prod(shape)  # not np.prod: this runs for every layer on every call (cache key)
    if quantizer == "per-channel" and len(shape) > 1:
        return int(shape[0]), numel // max(int(shape[0]), 1)
    return 1, numel


@dataclass(frozen=True, eq=False)
class WorkItems:
    """How a model's layers split into work items: a slice of at most ``block`` weights of one
    row of one layer. Items are ordered by row, rows by layer, so per-row and per-layer results
    reduce with ``reduceat`` at the ``*_first_item`` offsets. Depends on the shapes only (cached)."""

    layer: np.ndarray  # [items] layer index
    row: np.ndarray  # [items] global row index
    start: np.ndarray  # [items] first element, from the layer's start
    stop: np.ndarray  # [items] one past the last element
    row_first_item: np.ndarray  # [rows]
    layer_first_item: np.ndarray  # [layers]
    numel: np.ndarray  # [layers] float64
    device_copies: dict = field(default_factory=dict)  # device -> tensors (qe_triton)


@functools.lru_cache(maxsize=64)
def work_items(shapes: Tuple[Tuple[int, int], ...], block: int = BLOCK) -> WorkItems:
    """Work items for layers seen as [rows, cols] (see ``row_shape``)."""
    rows = np.array([r for r, _ in shapes], dtype=np.int64)
    cols = np.array([m for _, m in shapes], dtype=np.int64)
    chunks = (cols + block - 1) // block
    row_layer = np.repeat(np.arange(len(shapes)), rows)
    row_first = np.concatenate([[0], np.cumsum(rows)[:-1]])
    per_row_chunks = chunks[row_layer]
    item_row = np.repeat(np.arange(len(row_layer)), per_row_chunks)
    item_layer = row_layer[item_row]
    row_first_item = np.concatenate([[0], np.cumsum(per_row_chunks)[:-1]])
    chunk_in_row = np.arange(len(item_row)) - row_first_item[item_row]
    base = (item_row - row_first[item_layer]) * cols[item_layer]
    start = base + chunk_in_row * block
    stop = np.minimum(start + block, base + cols[item_layer])
    layer_items = np.bincount(item_layer, minlength=len(shapes))
    layer_first_item = np.concatenate([[0], np.cumsum(layer_items)[:-1]])
    return WorkItems(item_layer, item_row, start, stop, row_first_item, layer_first_item,
                     (rows * cols).astype(np.float64))


def items_for(weights: List[torch.Tensor], quantizer: str, block: int = BLOCK) -> WorkItems:
    return work_items(tuple(row_shape(tuple(w.shape), quantizer) for w in weights), block)


def _numba_rows(weights: List[torch.Tensor], bits: Sequence[int], quantizer: str):
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


# --- torch version (no numba on CPU, no Triton on CUDA) --------------------------------------------
_TORCH_CHUNK = 1 << 16


def _torch_layer(w: torch.Tensor, bits: Sequence[int], quantizer: str) -> Tuple[np.ndarray, float, bool]:
    w2 = rows_view(w, quantizer)
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


def qe_rows(weights: List[torch.Tensor], bits: Sequence[int], quantizer: str):
    """QE [L, B], mean(w^2) [L] and ``ok`` [L] (False where a layer holds NaN/Inf: the caller
    raises the error that names it) for non-empty float32 weights on one device."""
    bits = tuple(int(b) for b in bits)
    weights = [w if w.is_contiguous() else w.contiguous() for w in weights]  # kernels read raw memory
    if not weights:
        return np.zeros((0, len(bits))), np.zeros(0), np.ones(0, dtype=bool)
    if weights[0].is_cuda:
        from . import qe_triton

        if qe_triton.available():
            return qe_triton.qe_rows(weights, bits, quantizer)
    elif HAVE_NUMBA:
        with _NUMBA_LOCK:  # one model at a time: the two parallel regions use all cores anyway
            return _numba_rows(weights, bits, quantizer)
    out = [_torch_layer(w, bits, quantizer) for w in weights]
    return (np.array([o[0] for o in out]), np.array([o[1] for o in out]), np.array([o[2] for o in out]))
