"""Top-1 / top-5 / mean cross-entropy of a model on preprocessed evaluation tensors."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.image_sets import EvalTensors, Progress
from ..errors import MixQuantError
from .statistics import EarlyStop, PairedDifference, accuracy_intervals, paired_difference



@dataclass(frozen=True)
class Metrics:
    top1: float  # percent
    top5: float  # percent
    loss: float  # mean cross-entropy
    images: int
    # Per image, in the set's order (paired comparisons, intervals, stores): top-1 / top-5 right,
    # and the cross-entropy. None only for metrics built by hand.
    hit1: Optional[np.ndarray] = field(default=None, repr=False, compare=False)  # [images] bool
    hit5: Optional[np.ndarray] = field(default=None, repr=False, compare=False)  # [images] bool
    losses: Optional[np.ndarray] = field(default=None, repr=False, compare=False)  # [images] float64
    # True when an EarlyStop rule ended the evaluation after ``images`` images (a hopeless plan).
    stopped_early: bool = False

    @classmethod
    def from_per_image(cls, hit1, hit5, losses, stopped_early: bool = False) -> "Metrics":
        """Metrics from per-image results (any engine): the summary numbers are computed here only."""
        hit1, hit5 = np.asarray(hit1, dtype=bool), np.asarray(hit5, dtype=bool)
        losses = np.asarray(losses, dtype=np.float64)
        n = len(hit1)
        if n == 0 or len(hit5) != n or len(losses) != n:
            raise MixQuantError(f"per-image results disagree in length or are empty ({len(hit1)}, {len(hit5)}, {len(losses)})")
        return cls(100.0 * int(hit1.sum()) / n, 100.0 * int(hit5.sum()) / n, float(losses.sum()) / n, n,
                   hit1, hit5, losses, bool(stopped_early))

    def to_dict(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss, "images": self.images}

    def intervals(self) -> dict:
        """{"top1_ci": [lo, hi], "top5_ci": [lo, hi]}: 95 % Wilson intervals, percent."""
        return accuracy_intervals(self.hit1, self.hit5)

    def versus(self, reference: "Metrics") -> PairedDifference:
        """This top-1 minus ``reference``'s on the same images (the first ``images`` of it if stopped early)."""
        return paired_difference(self.hit1, reference.hit1)

    def summary(self, reference: Optional["Metrics"] = None) -> dict:
        """What the CLI prints as JSON: the numbers, their intervals and, given float32's metrics,
        ``vs_float32`` (paired difference, its interval, McNemar's p)."""
        out = {**self.to_dict(), **self.intervals(), "stopped_early": self.stopped_early}
        if reference is not None:
            out["vs_float32"] = self.versus(reference).to_dict()
        return out


def default_batch_size(device: torch.device) -> int:
    # CUDA: large batches fill the GPU. CPU: oneDNN already splits each conv over the cores, and
    # small batches keep activations in cache: measured on 2 cores, images/s at batch 2/4/8/16 were
    # 51/57/42/45 (efficientnet_lite0), 71/64/59/51 (mobilenet_v2), 13.9/13.5/13.8/12.4 (resnet50),
    # while activation memory grows with the batch (~25 MB per image for Lite0).
    return 256 if device.type == "cuda" else 4


# Keep a device copy of an evaluation set when it takes at most this share of the free GPU memory:
# a sweep then moves the images once, not once per plan.
_DEVICE_CACHE_SHARE = 0.25


def _device_batches(data: EvalTensors, device: torch.device, batch_size: int):
    """(x, y) batches on ``device``. On CUDA the uint8 pixels cross over (a quarter of float32's
    bytes) and are normalised there; a kept set that fits is copied once and kept on ``data``."""
    if device.type != "cuda":
        return data.batches(batch_size)
    cache = data.__dict__.setdefault("_device_copies", {})
    key = str(device)
    if key not in cache:
        free, _ = torch.cuda.mem_get_info(device)
        held = getattr(data, "images", None)  # None: a streamed set, never kept whole
        if held is None or held.numel() * held.element_size() > _DEVICE_CACHE_SHARE * free:
            return ((data.to_inputs(x.pin_memory().to(device, non_blocking=True)), y.to(device, non_blocking=True))
                    for x, y in data.pixel_batches(batch_size))
        cache[key] = (held.to(device), data.labels.to(device))
    images, labels = cache[key]
    return ((data.to_inputs(images[i:i + batch_size]), labels[i:i + batch_size]) for i in range(0, len(labels), batch_size))


def evaluate(model: nn.Module, data: EvalTensors, device: torch.device | str = "cpu",
             batch_size: Optional[int] = None, progress: Progress = None,
             early_stop: Optional[EarlyStop] = None) -> Metrics:
    """Evaluate ``model`` (already on ``device``) on ``data``.

    Per-image results stay on the device and are read once at the end (no per-batch sync on CUDA).
    With ``early_stop``, the running top-1 is read at every ``chunk`` images and the evaluation ends
    as soon as the rule finds the model hopeless (``Metrics.stopped_early``)."""
    device = torch.device(device)
    batch_size = batch_size or default_batch_size(device)
    results = PerImageResults(data, early_stop)
    finite = torch.ones((), dtype=torch.bool, device=device)
    with torch.inference_mode(), _cudnn_autotune(device):
        for x, y in _device_batches(data, device, batch_size):
            logits = model(x).float()
            finite &= torch.isfinite(logits).all()
            if results.add(logits, y, progress):
                break
        if not bool(finite):
            raise MixQuantError("the model produced NaN/Inf outputs (a quantized layer blew up)")
    return results.metrics()


class PerImageResults:
    """Per-image results gathered batch by batch, by every engine: labels checked against the
    model's classes on the first batch, progress reported, and the early-stop rule consulted every
    ``chunk`` images (``add`` returns True once the plan is found hopeless)."""

    def __init__(self, data: EvalTensors, early_stop: Optional[EarlyStop] = None):
        self.data, self.early_stop = data, early_stop
        self.parts = ([], [], [])  # hit1, hit5, losses
        self.done = 0
        self.next_look = early_stop.chunk if early_stop else len(data) + 1
        self.stopped = False

    def add(self, logits: torch.Tensor, labels: torch.Tensor, progress: Progress = None) -> bool:
        if not self.done:  # the model's class count is known now: no label may fall outside it
            self.data.check_labels(logits.shape[1])
        for part, value in zip(self.parts, per_image(logits, labels)):
            part.append(value)
        self.done += len(labels)
        if progress:
            progress(self.done, len(self.data), "evaluating")
        if self.done >= self.next_look:
            self.next_look = self.done + self.early_stop.chunk
            self.stopped = self.early_stop.hopeless(int(sum(int(h.sum()) for h in self.parts[0])), self.done)
        return self.stopped

    def metrics(self) -> Metrics:
        arrays = [torch.cat(part).cpu().numpy() for part in self.parts]
        return Metrics.from_per_image(*arrays, stopped_early=self.stopped)


def per_image(logits: torch.Tensor, labels: torch.Tensor):
    """(top-1 right, top-5 right, cross-entropy) per row of ``logits``; every engine uses this."""
    logits = logits.float()
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hits = top5 == labels[:, None]
    return hits[:, 0], hits.any(dim=1), F.cross_entropy(logits, labels, reduction="none").double()


@contextlib.contextmanager
def _cudnn_autotune(device: torch.device):
    """cuDNN picks the fastest conv algorithms for the fixed batch shape (CUDA only; restored after)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before or device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before
