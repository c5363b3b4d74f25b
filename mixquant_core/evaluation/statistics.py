"""How sure a measured accuracy is: 95 % intervals, paired comparisons with float32, early stopping.

Every interval here comes from statsmodels:
- a top-1/top-5 accuracy gets a Wilson score interval (``proportion_confint(method="wilson")``);
- a plan against float32 on the same images is a paired 2x2 table (both right, only float32
  right, only the plan right, both wrong). The p-value is McNemar's exact test
  (``mcnemar(exact=True)``: a binomial test on the discordant pairs). statsmodels has no interval
  for a paired difference of proportions, so the difference's interval is Newcombe's hybrid score
  interval for paired data (Newcombe 1998, method 10): it combines the two marginal Wilson
  intervals (statsmodels') with the continuity-corrected phi correlation of the pairs. Checked
  against the published value for the table [[59, 6], [16, 80]] (Fagerland, Lydersen and Laake,
  *Statistical Analysis of Contingency Tables*, ch. 8: -0.1186 to -0.0046).
- early stopping (``EarlyStop``) looks at a plan's running top-1 every ``chunk`` images; with L
  planned looks, each look uses a one-sided exact (Clopper-Pearson) upper bound at level alpha / L
  (Bonferroni over the looks), so the chance that any look wrongly declares a plan hopeless is at
  most alpha.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from ..errors import MixQuantError

ALPHA = 0.05  # 95 % intervals everywhere
Interval = Tuple[float, float]


def wilson_interval(hits: int, n: int, alpha: float = ALPHA) -> Interval:
    """95 % Wilson score interval of ``hits`` out of ``n``, in percent."""
    if n <= 0:
        raise MixQuantError("an accuracy interval needs at least one image")
    lo, hi = proportion_confint(int(hits), int(n), alpha=alpha, method="wilson")
    return 100.0 * float(lo), 100.0 * float(hi)


def accuracy_intervals(hit1: Sequence[bool], hit5: Sequence[bool]) -> dict:
    """{"top1_ci": [lo, hi], "top5_ci": [lo, hi]} in percent."""
    hit1, hit5 = np.asarray(hit1, dtype=bool), np.asarray(hit5, dtype=bool)
    return {"top1_ci": list(wilson_interval(hit1.sum(), len(hit1))),
            "top5_ci": list(wilson_interval(hit5.sum(), len(hit5)))}


@dataclass(frozen=True)
class PairedDifference:
    """A plan's top-1 minus float32's on the same images, in points, with how sure that is."""

    delta: float  # points (plan - float32)
    ci: Interval  # 95 % interval of delta, points
    p_value: float  # McNemar exact, two-sided
    only_plan: int  # images only the plan gets right
    only_reference: int  # images only float32 gets right
    images: int

    @property
    def within_noise(self) -> bool:
        """True when these images cannot tell the plan from float32 (the interval holds 0)."""
        return within_noise(self.to_dict())

    def to_dict(self) -> dict:
        return {"delta_top1": self.delta, "delta_ci": list(self.ci), "p_value": self.p_value}


def paired_difference(plan_hits: Sequence[bool], reference_hits: Sequence[bool], alpha: float = ALPHA) -> PairedDifference:
    """Plan vs reference (float32) on the same images: Newcombe's paired interval, McNemar's exact p.

    ``reference_hits`` may be longer (a plan stopped early): its first ``len(plan_hits)`` images are used.
    """
    plan = np.asarray(plan_hits, dtype=bool)
    ref = np.asarray(reference_hits, dtype=bool)[: len(plan)]
    n = len(plan)
    if n == 0 or len(ref) != n:
        raise MixQuantError(f"a paired comparison needs the same images on both sides ({len(plan)} vs {len(ref)})")
    both = int(np.sum(plan & ref))
    only_plan = int(np.sum(plan & ~ref))
    only_ref = int(np.sum(~plan & ref))
    neither = n - both - only_plan - only_ref
    p_value = float(mcnemar([[both, only_ref], [only_plan, neither]], exact=True).pvalue)
    lo, hi = _newcombe_paired(both, only_plan, only_ref, neither, alpha)
    delta = (only_plan - only_ref) / n
    return PairedDifference(100.0 * delta, (100.0 * lo, 100.0 * hi), min(p_value, 1.0), only_plan, only_ref, n)


def _newcombe_paired(both: int, only_first: int, only_second: int, neither: int, alpha: float) -> Interval:
    """Interval of p(first right) - p(second right) from paired counts (Newcombe 1998, method 10)."""
    a, b, c, d = both, only_first, only_second, neither
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = proportion_confint(a + b, n, alpha=alpha, method="wilson")
    l2, u2 = proportion_confint(a + c, n, alpha=alpha, method="wilson")
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    corrected = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
    phi = corrected / math.sqrt(margins) if margins > 0 else 0.0
    delta = p1 - p2
    lower = delta - math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    upper = delta + math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return max(lower, -1.0), min(upper, 1.0)


def within_noise(vs_float32: Optional[dict]) -> bool:
    """For a ``vs_float32`` dict (``PairedDifference.to_dict``): does its interval hold 0?"""
    return bool(vs_float32) and vs_float32["delta_ci"][0] <= 0.0 <= vs_float32["delta_ci"][1]


def describe_difference(diff: Optional[PairedDifference]) -> str:
    """One plain sentence: is the plan's difference from float32 real or within noise?"""
    if diff is None:
        return ""
    span = f"{diff.delta:+.2f} points (95 % interval {diff.ci[0]:+.2f} to {diff.ci[1]:+.2f}, McNemar p = {diff.p_value:.3g})"
    if diff.within_noise:
        return f"{span}: within noise on these {diff.images} images, not distinguishable from float32."
    side = "below" if diff.delta < 0 else "above"
    return f"{span}: really {side} float32 on these {diff.images} images."


@dataclass(frozen=True)
class EarlyStop:
    """Stop evaluating a plan once it is certain that its top-1 is below ``threshold`` (a fraction).

    Looks every ``chunk`` images, ``looks`` times at most (planned from the set's size); each look
    compares a one-sided Clopper-Pearson upper bound at level alpha / looks (Bonferroni) with the
    threshold, so all looks together wrongly stop a plan with probability at most ``alpha``.
    """

    threshold: float  # fraction, e.g. half of float32's top-1
    images: int  # planned: the whole set
    chunk: int = 50
    alpha: float = 0.001

    @property
    def looks(self) -> int:
        return max(1, math.ceil(self.images / self.chunk))

    def hopeless(self, hits: int, n: int) -> bool:
        """At a look (``n`` images so far, ``hits`` right): is the upper bound below the threshold?"""
        if n <= 0 or n >= self.images:
            return False
        one_sided = self.alpha / self.looks
        _, upper = proportion_confint(int(hits), int(n), alpha=2 * one_sided, method="beta")
        return float(upper) < self.threshold

    @classmethod
    def half_of(cls, reference_top1: float, images: int, chunk: int = 50, alpha: float = 0.001) -> "EarlyStop":
        """The rule "top-1 below half of float32's" (``reference_top1`` in percent)."""
        return cls(0.5 * reference_top1 / 100.0, images, chunk, alpha)

    def describe(self) -> str:
        return (f"stops a plan when its top-1 is below {100 * self.threshold:.1f} % with error rate {self.alpha:g} "
                f"(one-sided Clopper-Pearson bound every {self.chunk} images, Bonferroni over {self.looks} looks)")
