"""How a model's weights split into work items (slices of one row of one layer) for the kernels,
and the integer code range of each bit-width; shared by the numba, Triton and torch versions."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import numpy as np
import torch

from ..quantizers import is_per_channel, is_symmetric

BLOCK = 4096  # weights per work item: 16 KiB of float32, L1-resident while all bit-widths run


def code_range(quantizer: str, bits: Sequence[int]):
    """(qmin, qmax) [B] float32: the integer codes of each bit-width, as the reference's quantizers
    use them (affine: 0 .. 2^b - 1, symmetric: -2^(b-1) .. 2^(b-1) - 1)."""
    b = np.asarray(bits, dtype=np.float64)
    if is_symmetric(quantizer):
        return (-(2.0 ** (b - 1))).astype(np.float32), (2.0 ** (b - 1) - 1).astype(np.float32)
    return np.zeros(len(b), np.float32), (2.0 ** b - 1).astype(np.float32)



def row_shape(shape: Tuple[int, ...], quantizer: str) -> Tuple[int, int]:
    """(rows, weights per row) of a layer: output channels for per-channel, else one row."""
    numel = math.prod(shape)  # not np.prod: this runs for every layer on every call (cache key)
    if is_per_channel(quantizer) and len(shape) > 1:
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
    device_copies: dict = field(default_factory=dict)  # device -> tensors (triton_cuda)


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
