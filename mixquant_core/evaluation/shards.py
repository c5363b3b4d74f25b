"""An evaluation set cut into shards for a cluster, and the shards' per-image results merged back.

A shard is a contiguous run of the set's images, cut at a multiple of the engines' batch size, so
every batch a worker runs is a batch a single process runs too: the per-image results, and every
number made from them, are the single process's (bit for bit with ONNX Runtime, whose results do
not depend on the thread count either; tests/test_cluster.py checks it).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data.image_sets import EvalTensors, ImageList
from ..errors import MixQuantError
from .evaluate import Metrics

# A task pays a fixed price (a session built, a shard read), so no shard is smaller than this;
# and one task holds its shard decoded (uint8 pixels, 150 KB an image at 224 px), so none is larger than that.
SMALLEST_SHARD = 64
LARGEST_SHARD = 1024
SHARDS_PER_WORKER = 2  # a little slack, so a slow worker does not hold the others up at the end


def shard_size(images: int, workers: int, align: int) -> int:
    """Images per shard: ``SHARDS_PER_WORKER`` shards per worker where the set is large enough for
    shards of ``SMALLEST_SHARD``, more where it would need shards above ``LARGEST_SHARD``; as even
    as ``align`` allows. It does not depend on how many plans run, so one set's shards serve every
    call of a search."""
    count = min(SHARDS_PER_WORKER * max(1, workers), max(1, images // SMALLEST_SHARD))
    count = max(count, math.ceil(images / LARGEST_SHARD))
    return math.ceil(math.ceil(images / count) / align) * align


def shard_bounds(images: int, size: int) -> List[Tuple[int, int]]:
    """[(start, stop)] covering ``images`` in order, every shard ``size`` long but the last."""
    if images < 1 or size < 1:
        raise MixQuantError(f"cannot cut {images} images into shards of {size}")
    return [(start, min(start + size, images)) for start in range(0, images, size)]


def kept_images(data: EvalTensors) -> Optional[ImageList]:
    """The files of the images ``data`` holds, in its order, when it was decoded to pixels from files
    (kept or streamed): workers decode their shards from them. None for sets built by hand, or
    decoded with a hand-made transform (no ``preprocess`` to decode them again with)."""
    images = data.image_list
    if images is None or data.preprocess is None or len(images) != len(data):
        return None
    if not torch.equal(torch.tensor(images.labels, dtype=torch.long), data.labels.cpu()):
        return None
    return images


def merge_shards(parts: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]], images: int) -> Metrics:
    """One plan's metrics from its shards' (hit1, hit5, losses), in shard order."""
    hit1, hit5, losses = (np.concatenate([part[k] for part in parts]) for k in range(3))
    if len(hit1) != images:
        raise MixQuantError(f"the cluster returned results for {len(hit1)} images, not the set's {images}")
    return Metrics.from_per_image(hit1, hit5, losses)
