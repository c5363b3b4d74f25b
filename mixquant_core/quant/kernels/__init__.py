"""QE-table kernels: every candidate bit-width of every layer from two reads of the weights.
Holds the numba (CPU), Triton (CUDA) and torch versions; imports only ``quant.quantizers``.

The MSE-clipped quantizers (``*-mse``) go to ``torch_rows.mse_layer_rows`` on every device: their
range search is already one vectorised pass per bit-width that yields the error it picks."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch

from ..quantizers import is_mse
from . import numba_cpu, torch_rows


def qe_rows(weights: List[torch.Tensor], bits: Sequence[int], quantizer: str):
    """QE [L, B], mean(w^2) [L] and ``ok`` [L] (False where a layer holds NaN/Inf: the caller
    raises the error that names it) for non-empty float32 weights on one device."""
    bits = tuple(int(b) for b in bits)
    weights = [w if w.is_contiguous() else w.contiguous() for w in weights]  # kernels read raw memory
    if not weights:
        return np.zeros((0, len(bits))), np.zeros(0), np.ones(0, dtype=bool)
    if is_mse(quantizer):  # MSE-clipped ranges: the torch range search, on the weights' device
        return _stacked([torch_rows.mse_layer_rows(w, bits, quantizer) for w in weights])
    if weights[0].is_cuda:
        from . import triton_cuda  # imports Triton: only where weights are on CUDA

        if triton_cuda.available():
            return triton_cuda.qe_rows(weights, bits, quantizer)
    elif numba_cpu.HAVE_NUMBA:
        with numba_cpu.NUMBA_LOCK:  # one model at a time: the two parallel regions use all cores anyway
            return numba_cpu.numba_rows(weights, bits, quantizer)
    return _stacked([torch_rows.layer_rows(w, bits, quantizer) for w in weights])


def _stacked(out):
    return np.array([o[0] for o in out]), np.array([o[1] for o in out]), np.array([o[2] for o in out])
