"""Which allocation wins: accuracy against size for uniform, MixQuant-QEM and budgeted plans.

For every average-bit target each method proposes its plan within that budget (uniform plans sit
at whole bit-widths); every distinct plan is evaluated once (the Workspace caches per plan), and
each point is marked when no other point is at most as large and at least as accurate with one
of the two strictly better (the Pareto front of size vs top-1).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..data.image_sets import EvalTensors
from ..errors import MixQuantError
from ..plans.plan import Plan
from ..quant.qe import BASE_BITS
from ..evaluations import Evaluations, PlanRow
from ..workspace import Workspace

Progress = Optional[Callable[[int, int, str], None]]

# method name -> what it is (the CLI's --methods and the plot's legend use these names)
METHODS = {
    "uniform": "every layer at the same bit-width",
    "mixquant": "the paper's rule QE(b) <= QEM x QE(8), smallest QEM within the budget",
    "budget-qe": "least summed QE within the budget (Lagrangian hull sweep)",
    "budget-fisher": "least summed Fisher-weighted error within the budget (Lagrangian hull sweep)",
}
DEFAULT_TARGETS = (7.0, 6.0, 5.0, 4.5, 4.0, 3.5, 3.0)  # average bits


@dataclass(frozen=True)
class Candidate:
    method: str  # float32 | one of METHODS
    target: Optional[float]  # the average-bit budget it was made for (uniform: its bit-width)
    bits: Optional[tuple]  # per layer, model order; None for float32
    qem: Optional[float] = None


def check_targets(targets: Sequence[float]) -> List[float]:
    out = []
    for t in targets:
        t = float(t)
        if not (np.isfinite(t) and 2 <= t <= 8):
            raise MixQuantError(f"average-bit targets must be from 2 to 8, got {t:g}")
        out.append(t)
    if not out:
        raise MixQuantError("give at least one average-bit target")
    return sorted(set(out), reverse=True)


def candidates(ws: Workspace, targets: Sequence[float] = DEFAULT_TARGETS, methods: Sequence[str] = tuple(METHODS),
               calib: Optional[EvalTensors] = None, include_float: bool = True) -> List[Candidate]:
    """The plans to compare, in display order (float32, then per method by falling budget)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise MixQuantError(f"unknown method '{unknown[0]}'; choose from {', '.join(METHODS)}")
    targets = check_targets(targets)
    pinned = np.asarray(ws.pinned, dtype=bool)
    out = [Candidate("float32", None, None)] if include_float else []
    for method in methods:
        if method == "uniform":
            for b in ws.bits:
                bits = ws.uniform(b)
                bits[pinned] = BASE_BITS
                out.append(Candidate(method, float(b), tuple(int(x) for x in bits)))
            continue
        for t in targets:
            if method == "mixquant":
                qem = ws.qem_for_budget(avg_bits=t)
                out.append(Candidate(method, t, tuple(int(x) for x in ws.bits_for([qem])[0]), qem))
            else:
                cost = method.split("-", 1)[1]
                bits = ws.budget_bits(cost, avg_bits=t, calib=calib)
                out.append(Candidate(method, t, tuple(int(x) for x in bits)))
    return out


def pareto_mask(size: Sequence[float], accuracy: Sequence[float]) -> np.ndarray:
    """True where no other point is as small and as accurate, and strictly better in one."""
    size = np.asarray(size, dtype=np.float64)
    acc = np.asarray(accuracy, dtype=np.float64)
    no_worse = (size[None, :] <= size[:, None]) & (acc[None, :] >= acc[:, None])
    better = (size[None, :] < size[:, None]) | (acc[None, :] > acc[:, None])
    return ~np.any(no_worse & better, axis=1)


def compare(ev: Evaluations, data: EvalTensors, targets: Sequence[float] = DEFAULT_TARGETS,
            methods: Sequence[str] = tuple(METHODS), calib: Optional[EvalTensors] = None,
            include_float: bool = True, progress: Progress = None) -> List[PlanRow]:
    """Evaluate every method's plans (each distinct plan once) and mark the Pareto front."""
    ws = ev.ws
    if "budget-fisher" in methods and calib is None:
        raise MixQuantError("the budget-fisher method needs calibration images")
    if "budget-fisher" in methods:
        ws.fisher(calib, progress)
    cands = candidates(ws, targets, methods, calib, include_float)
    ev.evaluate_plans([c.bits for c in cands], data, progress)
    rows = [ev.row(c.method, c.bits, data, qem=c.qem, target=c.target) for c in cands]
    front = pareto_mask([r.size_mb for r in rows], [r.top1 for r in rows])
    return [replace(r, pareto=bool(p)) for r, p in zip(rows, front)]


def matched(rows: Sequence[PlanRow]) -> List[Dict[str, object]]:
    """One line per budget: each method's plan for it (uniform plans match whole-bit budgets)."""
    targets = sorted({r.target for r in rows if r.target is not None and r.method != "uniform"}, reverse=True)
    out = []
    for t in targets:
        line: Dict[str, object] = {"target": t}
        for r in rows:
            if r.target == t:
                line[r.method] = r
        out.append(line)
    return out


def plan_for(ws: Workspace, row: PlanRow) -> Plan:
    """The exportable plan of one compared point."""
    if row.bits is None:
        raise MixQuantError("the float32 point has no quantization plan to export")
    extra = {"method": row.method, "method_description": METHODS.get(row.method, "")}
    if row.target is not None and row.method != "uniform":
        extra["budget_avg_bits"] = row.target
    return ws.plan_from_bits(list(row.bits), qem=row.qem, extra=extra)
