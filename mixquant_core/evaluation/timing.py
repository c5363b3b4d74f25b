"""How long evaluations take, measured, and the evaluation subset that fits a time budget.

The app's default subset is sized by time: the largest of the set's first 100 / 500 / all images
whose Trade-off evaluation (float32, int8 and the QEM grid's plans, each in full) is estimated to
fit about 30 s, from this model's images per second measured on this machine's engine.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

from ..data.image_sets import EvalTensors
from ..errors import MixQuantError

SUBSET_CHOICES = (100, 500, None)  # None: the whole set
SUBSET_BUDGET_S = 30.0


@dataclass(frozen=True)
class Throughput:
    """Evaluation speed of one model on one engine: images per second once running, and the
    fixed cost of each plan (building its session, copying weights)."""

    images_per_second: float
    seconds_per_plan: float

    def seconds(self, images: int, plans: int) -> float:
        return plans * (self.seconds_per_plan + images / self.images_per_second)


def measure_throughput(evaluate, image_shape: Tuple[int, ...], small: int = 8,
                       large: int = 40) -> Throughput:
    """Time ``evaluate(data)`` (one plan's evaluation) on ``small`` and ``large`` random images after a
    warm-up run (which pays for one-off work: an ONNX trace, kernel choices); the difference gives
    images/s, the rest the per-plan cost. Random pixels cost what real ones do."""
    g = torch.Generator().manual_seed(0)

    def timed(n: int) -> float:
        data = EvalTensors(torch.rand((n, *image_shape), generator=g), torch.zeros(n, dtype=torch.long))
        start = time.perf_counter()
        evaluate(data)
        return time.perf_counter() - start

    timed(small)  # warm-up
    t_small, t_large = timed(small), timed(large)
    per_image = max((t_large - t_small) / (large - small), 1e-6)
    return Throughput(1.0 / per_image, max(t_small - small * per_image, 0.0))


def subset_for_time(total: int, speed: Throughput, plans: int, budget_s: float = SUBSET_BUDGET_S,
                    choices: Sequence[Optional[int]] = SUBSET_CHOICES) -> int:
    """The largest of ``choices`` (first N images; None = all ``total``) whose ``plans`` evaluations
    fit ``budget_s``; the smallest choice when none fits (the set itself when smaller)."""
    if total < 1:
        raise MixQuantError("the evaluation set has no image")
    sizes = sorted({min(total, c if c is not None else total) for c in choices})
    fitting = [n for n in sizes if speed.seconds(n, plans) <= budget_s]
    return fitting[-1] if fitting else sizes[0]
