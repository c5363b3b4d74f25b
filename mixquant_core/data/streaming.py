"""An evaluation set too large to keep in memory: decoded from its files again on every pass.

Batches are decoded by a pool of threads (the decoders and the resize release the GIL) at most
``prefetch`` batches ahead of the model, so memory stays flat in the number of images: the
labels, the paths and a few batches of uint8 pixels. Same pixels, same order, same numbers as the
kept set (``EvalTensors``) of the same files, and the same content key, so stored results serve both.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, List, Optional, Tuple

import torch

from ..errors import DatasetError
from .decode import decode_pixels, probe
from .image_sets import ImageList, Progress, check_labels, decode_workers, describe, pixels_source, source_key

# Batches decoded ahead of the model, per decoding thread: enough to hide a slow file, small enough
# to stay a few MB (8 batches of 8 images of 150 KB = 10 MB).
PREFETCH_PER_WORKER = 4


class StreamedImages:
    """The images of ``image_list`` decoded batch by batch on every pass (``batches``).

    The headers are read once up front (threads, with ``progress``): files that are not images are
    skipped and counted, as a kept set would, so ``len`` and the content key are known before any
    pass. A file whose body turns out corrupt during a pass is left out of that batch (the same in
    every pass, so plans stay paired image by image) and added to ``skipped``."""

    def __init__(self, image_list: ImageList, preprocess, progress: Progress = None,
                 workers: Optional[int] = None, prefetch: Optional[int] = None):
        self.preprocess = preprocess
        self.workers = workers or decode_workers()
        self.prefetch = prefetch or PREFETCH_PER_WORKER * self.workers
        n = len(image_list)
        ok: List[bool] = []
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for i, good in enumerate(pool.map(probe, image_list.paths)):
                ok.append(good)
                if progress and (i + 1 == n or i % 256 == 0):
                    progress(i + 1, n, "reading image headers")
        kept = [i for i, good in enumerate(ok) if good]
        if not kept:
            raise DatasetError(f"none of the {n} images in '{image_list.root}' could be read")
        self.skipped: List[str] = [p for p, good in zip(image_list.paths, ok) if not good]
        self.image_list = image_list.pick(kept)
        self.labels = torch.tensor(self.image_list.labels, dtype=torch.long)
        self.origins = [describe(image_list, i) for i in kept]
        self.source = pixels_source(image_list, preprocess, len(self.skipped))
        self._pixel_transform = preprocess.pixel_transform()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> Tuple[int, ...]:
        return (3, self.preprocess.crop, self.preprocess.crop)

    @property
    def fingerprint(self) -> str:
        return source_key(self.source, len(self))

    def check_labels(self, num_classes: int, allow_unlabelled: bool = False) -> None:
        check_labels(self.labels, self.origins, num_classes, allow_unlabelled)

    def to_inputs(self, pixels: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.preprocess.normalize(pixels, out)

    def _decode_batch(self, start: int, stop: int) -> Tuple[torch.Tensor, torch.Tensor]:
        paths = self.image_list.paths[start:stop]
        decoded = [decode_pixels(p, self._pixel_transform) for p in paths]
        keep = [k for k, x in enumerate(decoded) if x is not None]
        for k, x in enumerate(decoded):
            if x is None and paths[k] not in self.skipped:
                self.skipped.append(paths[k])
        if not keep:
            return torch.empty((0, *self.image_shape), dtype=torch.uint8), self.labels[:0]
        return torch.stack([decoded[k] for k in keep]), self.labels[start:stop][keep]

    def pixel_batches(self, batch_size: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 pixels, labels) batches in order, decoded ``prefetch`` batches ahead at most."""
        starts = iter(range(0, len(self), batch_size))
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="mixquant-decode")
        pending: deque = deque()
        try:
            for start in starts:
                pending.append(pool.submit(self._decode_batch, start, start + batch_size))
                if len(pending) >= self.prefetch:
                    break
            while pending:
                pixels, labels = pending.popleft().result()
                start = next(starts, None)
                if start is not None:
                    pending.append(pool.submit(self._decode_batch, start, start + batch_size))
                if len(labels):
                    yield pixels, labels
        finally:  # a pass ended early (early stop, an error): drop what was decoded ahead
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def batches(self, batch_size: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for pixels, labels in self.pixel_batches(batch_size):
            yield self.to_inputs(pixels), labels

    def inputs(self, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
        """The model's float input for images ``start:stop``, decoded now (small ranges only)."""
        pixels, _ = self._decode_batch(start, len(self) if stop is None else stop)
        return self.to_inputs(pixels)
