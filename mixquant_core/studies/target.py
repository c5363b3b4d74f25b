"""An accuracy target: the smallest plan of a family whose top-1 stays within D points of float32.

The family's distinct plans are ordered by size (largest first); accuracy falls, near enough
monotonically, as plans shrink, so a bisection finds the last plan that meets the target after
about log2(plans) evaluations, each plan evaluated at most once. The drop is measured against
float32 on the same images (a paired difference); with ``confident`` the upper end of its 95 %
interval must be within D, not just the measured drop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from ..data.image_sets import EvalTensors
from ..errors import MixQuantError
from ..evaluation.evaluate import Metrics
from ..evaluation.statistics import PairedDifference
from ..plans.plan import Plan
from ..plans.size import SizeSummary
from ..evaluations import Evaluations
from ..workspace import Workspace

Progress = Optional[Callable[[int, int, str], None]]
FAMILIES = {
    "qem": "MixQuant's rule QE(b) <= QEM x QE(8), every distinct plan along the QEM axis",
    "qe": "least summed QE for each size (Lagrangian hull sweep)",
    "fisher": "least summed Fisher-weighted error for each size (needs calibration images)",
}


@dataclass(frozen=True)
class Step:
    """One plan the bisection evaluated."""

    index: int  # in the family, largest plan first
    size_mb: float
    top1: float
    drop: float  # float32 top-1 minus the plan's, points
    drop_upper: float  # upper end of the drop's 95 % interval
    passed: bool
    stopped_early: bool


@dataclass(frozen=True)
class TargetResult:
    method: str
    max_drop: float
    confident: bool
    candidates: int  # distinct plans in the family
    reference: Metrics  # float32
    index: Optional[int] = None  # the answer's place in the family; None when no plan meets the target
    bits: Optional[tuple] = None
    qem: Optional[float] = None
    metrics: Optional[Metrics] = None
    difference: Optional[PairedDifference] = None
    size: Optional[SizeSummary] = None
    steps: List[Step] = field(default_factory=list)

    @property
    def evaluated(self) -> int:
        """Plans of the family evaluated to find the answer (float32 not counted)."""
        return len(self.steps)

    @property
    def found(self) -> bool:
        return self.index is not None

    @property
    def drop_ci(self) -> List[float]:
        """The top-1 drop's 95 % interval, points (the paired difference's, negated)."""
        return [-self.difference.ci[1], -self.difference.ci[0]]

    def certainty(self) -> str:
        """How sure the answer is, in one sentence."""
        if not self.found:
            return (f"No {self.method} plan keeps top-1 within {self.max_drop:g} points of float32"
                    f"{' at 95 % confidence' if self.confident else ''} ({self.evaluated} of {self.candidates} plans evaluated).")
        d = self.difference
        drop_lo, drop_hi = self.drop_ci
        sure = drop_hi <= self.max_drop
        return (f"Drop {-d.delta:.2f} points (95 % interval {drop_lo:.2f} to {drop_hi:.2f}, McNemar p = {d.p_value:.3g}, "
                f"{d.images} images): " + ("the target holds even at the interval's worst end." if sure else
                                           f"the measured drop meets the target, but the drop could be up to "
                                           f"{drop_hi:.2f} points; evaluate more images or use the confident mode."))

    def to_dict(self) -> dict:
        out = {"method": self.method, "max_drop": self.max_drop, "confident": self.confident,
               "candidates": self.candidates, "evaluated": self.evaluated, "found": self.found,
               "float32": self.reference.summary(), "steps": [s.__dict__ for s in self.steps]}
        if self.found:
            out.update(qem=self.qem, size=self.size.to_dict(), plan=self.metrics.summary(self.reference),
                       drop=-self.difference.delta, drop_ci=self.drop_ci)
        return out


def family_plans(ws: Workspace, method: str, calib: Optional[EvalTensors] = None) -> tuple:
    """(bits [P, L], QEM of each plan or None) of ``method``'s distinct plans, largest first."""
    if method not in FAMILIES:
        raise MixQuantError(f"unknown plan family '{method}'; choose from {', '.join(FAMILIES)}")
    if method == "qem":
        fam = ws.family()
        bits, qems = np.asarray(fam.bits), [float(q) for q in fam.qems]
    else:
        bits = np.asarray(ws.allocation_family(method, "bytes", calib).bits)
        qems = [None] * len(bits)
    seen, keep = set(), []
    for i, b in enumerate(bits):
        t = tuple(int(x) for x in b)
        if t not in seen:
            seen.add(t)
            keep.append(i)
    sizes = [ws.size(bits[i]).plan_mb for i in keep]
    order = sorted(range(len(keep)), key=lambda k: -sizes[k])  # stable: ties keep the family's order
    return bits[[keep[k] for k in order]], [qems[keep[k]] for k in order]


def smallest_within_drop(ev: Evaluations, data: EvalTensors, max_drop: float, method: str = "qem",
                         confident: bool = False, calib: Optional[EvalTensors] = None,
                         progress: Progress = None) -> TargetResult:
    """Bisection over ``method``'s plans for the smallest whose top-1 drop (or, ``confident``, the
    drop's 95 % upper bound) is at most ``max_drop`` points."""
    if not (isinstance(max_drop, (int, float)) and np.isfinite(max_drop) and 0 <= max_drop <= 100):
        raise MixQuantError(f"the allowed top-1 drop must be a number of points from 0 to 100, got {max_drop!r}")
    ws = ev.ws
    bits, qems = family_plans(ws, method, calib)
    reference = ev.evaluate_bits(None, data)
    steps: Dict[int, Step] = {}
    budget = int(np.ceil(np.log2(len(bits) + 1))) + 1  # bisection steps at most (for the progress bar)

    def passes(i: int) -> bool:
        if i not in steps:
            if progress:
                progress(len(steps), budget, f"plan {i + 1} of {len(bits)}")
            m = ev.evaluate_bits(bits[i], data)
            d = m.versus(reference)
            ok = not m.stopped_early and (-d.ci[0] if confident else -d.delta) <= max_drop + 1e-9
            steps[i] = Step(i, ws.size(bits[i]).plan_mb, m.top1, -d.delta, -d.ci[0], ok, m.stopped_early)
        return steps[i].passed

    lo, hi = -1, len(bits)  # invariant: plans <= lo pass (or lo = -1), plans >= hi fail
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            lo = mid
        else:
            hi = mid
    if progress:
        progress(budget, budget, "done")
    trail = [steps[i] for i in sorted(steps)]
    base = TargetResult(method, float(max_drop), confident, len(bits), reference, steps=trail)
    if lo < 0:
        return base
    m = ev.evaluate_bits(bits[lo], data)
    return TargetResult(method, float(max_drop), confident, len(bits), reference, lo, tuple(int(x) for x in bits[lo]),
                        qems[lo], m, m.versus(reference), ws.size(bits[lo]), trail)


def target_plan(ws: Workspace, result: TargetResult) -> Plan:
    """The answer as a plan file, with what it was chosen for and how sure that is."""
    if not result.found:
        raise MixQuantError(result.certainty())
    extra = {"method": result.method, "accuracy_target": {
        "max_drop": result.max_drop, "confident": result.confident, "top1": result.metrics.top1,
        "drop": -result.difference.delta, "drop_ci": result.drop_ci,
        "images": result.metrics.images, "evaluated": result.evaluated, "candidates": result.candidates}}
    return ws.plan_from_bits(list(result.bits), qem=result.qem, extra=extra)
