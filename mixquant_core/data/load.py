"""Decoding an evaluation set: kept in memory as uint8 pixels when it fits the budget, else streamed.

``load_tensors`` is the one entry point; the CLI's ``--cache-mb`` and $MIXQUANT_CACHE_MB set the budget.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Optional

import torch

from ..errors import DatasetError
from ..numbers import env_number, parse_number
from .decode import decode_float
from .image_sets import EvalTensors, ImageList, Progress, decode_workers, describe, pixels_source
from .streaming import StreamedImages


def default_cache_mb() -> float:
    """A quarter of the machine's memory ($MIXQUANT_CACHE_MB overrides): decoded sets larger than
    this are streamed from their files on every pass instead of kept."""
    env = env_number("MIXQUANT_CACHE_MB")  # the bounds of --cache-mb (mixquant_core.numbers)
    if env is not None:
        return float(env)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4 / 1e6
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 4000.0


def load_tensors(images: ImageList, preprocess, progress: Progress = None, cache_mb: Optional[float] = None):
    """The evaluation set of ``images``: decoded once into uint8 pixels kept in memory when they fit
    in ``cache_mb`` megabytes (default: ``default_cache_mb()``), else a ``StreamedImages`` that
    decodes batches from the files on every pass with a bounded prefetch (memory flat in N).
    Unreadable images are skipped and listed.

    ``preprocess`` is a ``models.Preprocess`` (its ``pixel_transform`` and ``normalize``); a plain
    callable is taken as a PIL -> float tensor transform and its output kept as float32."""
    if not hasattr(preprocess, "pixel_transform"):
        return _load_float(images, preprocess, progress)
    if cache_mb is None:
        budget = default_cache_mb()
    elif cache_mb == math.inf:  # a caller (never a user's setting) that keeps the set whatever its size
        budget = math.inf
    else:
        budget = float(parse_number("cache_mb", cache_mb, "the cache size in MB"))
    if len(images) * 3 * preprocess.crop * preprocess.crop > budget * 1e6:
        return StreamedImages(images, preprocess, progress)
    return _load_pixels(images, preprocess, progress)


def _fill(images: ImageList, decode: Callable[[str], Optional[torch.Tensor]], progress: Progress):
    """Decode every image on a thread per core, straight into one preallocated tensor (no list of N
    tensors plus a stacked copy: the peak stays at about one copy of the set)."""
    from concurrent.futures import ThreadPoolExecutor

    n = len(images)
    out: Optional[torch.Tensor] = None
    ys, skipped, kept, kept_index = [], [], [], []
    with ThreadPoolExecutor(max_workers=decode_workers()) as pool:
        for i, (x, path, label) in enumerate(zip(pool.map(decode, images.paths), images.paths, images.labels)):
            if x is None:
                skipped.append(path)
            else:
                if out is None:
                    out = torch.empty((n, *x.shape), dtype=x.dtype)
                if x.shape != out.shape[1:]:
                    raise DatasetError(f"'{path}' preprocesses to {tuple(x.shape)}, not {tuple(out.shape[1:])} like "
                                       "the images before it; the transform must crop to one size")
                out[len(ys)] = x
                ys.append(label)
                kept_index.append(i)
                kept.append(describe(images, i))
            if progress:
                progress(i + 1, n, "decoding images")
    if out is None:
        raise DatasetError(f"none of the {n} images in '{images.root}' could be read")
    pixels = out if len(ys) == n else out[:len(ys)].clone()  # clone: let the unused rows go
    return pixels, torch.tensor(ys, dtype=torch.long), skipped, kept, images.pick(kept_index)


def _load_pixels(images: ImageList, preprocess, progress: Progress) -> EvalTensors:
    from .decode import decode_pixels

    pixel_transform = preprocess.pixel_transform()
    pixels, labels, skipped, kept, kept_list = _fill(images, lambda p: decode_pixels(p, pixel_transform), progress)
    return EvalTensors(pixels, labels, skipped, pixels_source(images, preprocess, len(skipped)), kept, preprocess, kept_list)


def _load_float(images: ImageList, transform: Callable, progress: Progress) -> EvalTensors:
    tensors, labels, skipped, kept, kept_list = _fill(images, lambda p: decode_float(p, transform), progress)
    source = f"{images.fingerprint()}|{transform!r}|skipped={len(skipped)}"
    return EvalTensors(tensors, labels, skipped, source, kept, None, kept_list)
