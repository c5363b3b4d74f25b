"""One caller's evaluations of a Workspace's plans, and the row every table of plans is made of.

``Evaluations(ws, store=..., early_stop=...)`` binds a shared Workspace to the choices of one
caller (a CLI command, one browser session of the app, a test): the results store it reads and
writes, and whether hopeless plans stop early. It is immutable, so one session's choice can never
reach another's results; its ``tally`` counts what this caller's evaluations cost. The measuring,
caching and storing happen in the Workspace's ``Evaluator``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence

from .data.image_sets import EvalTensors
from .evaluation.evaluate import Metrics
from .evaluation.evaluator import Progress, Tally
from .evaluation.store import ResultsStore
from .plans.plan import Plan
from .quant.qe import BASE_BITS
from .workspace import Workspace


@dataclass(frozen=True)
class PlanRow:
    """One evaluated plan in a table: a sweep's row (the paper's Table 2, plus size columns) or a
    comparison's point."""

    method: str  # float32 | int8 | mixquant | uniform | budget-qe | budget-fisher
    qem: Optional[float]
    bit_set: str  # e.g. "5, 6, 7"
    top1: float
    top5: float
    loss: float
    quant_mse: Optional[float]  # parameter-weighted MSE over all quantized weights
    avg_bits: float
    size_mb: float
    compression: float
    # How sure the numbers are (evaluation/statistics.py): 95 % Wilson intervals in percent, the
    # paired difference with float32 on the same images ({delta_top1, delta_ci, p_value}; None for
    # float32 itself), the images evaluated and whether an early-stop rule ended the evaluation.
    top1_ci: Optional[tuple] = None
    top5_ci: Optional[tuple] = None
    vs_float32: Optional[dict] = None
    images: int = 0
    stopped_early: bool = False
    # Comparisons: the average-bit budget the plan was made for, whether it is on the Pareto front
    # of size vs top-1, and the per-layer bits (model order) to export it.
    target: Optional[float] = None
    pareto: bool = False
    bits: Optional[tuple] = field(default=None, compare=False)

    def to_dict(self, with_bits: bool = False) -> dict:
        out = asdict(self)
        for k in ("top1_ci", "top5_ci"):
            out[k] = list(out[k]) if out[k] is not None else None
        if with_bits:
            out["bits"] = list(self.bits) if self.bits is not None else None
        else:
            del out["bits"]
        return out

    def to_flat_dict(self) -> dict:
        """One CSV row: the intervals and the paired comparison as plain columns."""
        return flat_stats(self.to_dict())


def flat_stats(row: dict) -> dict:
    """``row`` with top1_ci/top5_ci/vs_float32 spread into plain columns (CSV, tables)."""
    out = {k: v for k, v in row.items() if k not in ("top1_ci", "top5_ci", "vs_float32")}
    for k in ("top1", "top5"):
        lo, hi = row.get(f"{k}_ci") or (None, None)
        out[f"{k}_lo"], out[f"{k}_hi"] = lo, hi
    vs = row.get("vs_float32") or {}
    lo, hi = vs.get("delta_ci") or (None, None)
    out.update(delta_top1=vs.get("delta_top1"), delta_lo=lo, delta_hi=hi, p_value=vs.get("p_value"))
    return out


PLAN_ROW_COLUMNS = list(flat_stats(PlanRow("", None, "", 0, 0, 0, None, 0, 0, 0).to_dict()))


@dataclass(frozen=True)
class Evaluations:
    ws: Workspace
    store: Optional[ResultsStore] = None  # results kept across runs (evaluation/store.py); None = memory only
    early_stop: bool = False  # stop a plan once its top-1 is surely below half of float32's
    tally: Tally = field(default_factory=Tally, compare=False)

    def evaluate_bits(self, bits: Optional[Sequence[int]], data: EvalTensors, progress: Progress = None) -> Metrics:
        """Metrics of the float32 model (``bits=None``) or of per-layer ``bits`` (model order)."""
        return self.ws.evaluator.evaluate(self.ws.named(bits), self.ws.recipe, data, self.store, self.early_stop,
                                          progress, self.tally)

    def evaluate_plan(self, plan: Plan, data: EvalTensors, progress: Progress = None) -> Metrics:
        """Metrics of a loaded plan (its own quantizer and layers), after checking it fits the model."""
        plan.check_against(self.ws.loaded.model)
        return self.ws.evaluator.evaluate(plan.bits, plan.recipe, data, self.store, self.early_stop, progress,
                                          self.tally)

    def evaluate_plans(self, plans: Sequence[Optional[Sequence[int]]], data: EvalTensors,
                       progress: Progress = None) -> List[Metrics]:
        """Each distinct plan of ``plans`` (``None`` = float32) evaluated once, one progress step per plan."""
        return self.ws.evaluator.evaluate_many([self.ws.named(b) for b in plans], self.ws.recipe, data, self.store,
                                               self.early_stop, progress, self.tally)

    def has_results(self, plans: Sequence[Optional[Sequence[int]]], data: EvalTensors) -> bool:
        """True when every plan (``None`` = float32) is known from memory or the store: nothing to evaluate.
        (What it reads from the store counts in ``tally.from_store``.)"""
        known = self.ws.evaluator.known
        return all(known(self.ws.named(b), self.ws.recipe, data, self.store, self.early_stop, self.tally) is not None
                   for b in plans)

    def row(self, method: str, bits: Optional[Sequence[int]], data: EvalTensors, qem: Optional[float] = None,
            target: Optional[float] = None, progress: Progress = None) -> PlanRow:
        ws = self.ws
        m = self.evaluate_bits(bits, data, progress)
        ci = m.intervals()
        stats = dict(top1_ci=tuple(ci["top1_ci"]), top5_ci=tuple(ci["top5_ci"]), images=m.images,
                     stopped_early=m.stopped_early, target=target)
        if bits is None:
            return PlanRow(method, None, "all float32", m.top1, m.top5, m.loss, None, 32.0,
                           ws.float_bytes / 1e6, 1.0, **stats)
        s = ws.size(bits)
        bit_set = ", ".join(str(b) for b in sorted(set(int(b) for b in bits)))
        vs = m.versus(self.evaluate_bits(None, data)).to_dict()
        return PlanRow(method, qem, bit_set, m.top1, m.top5, m.loss, ws.quant_mse(bits), s.avg_bits,
                       s.plan_mb, s.compression, vs_float32=vs, bits=tuple(int(b) for b in bits), **stats)

    def sweep(self, data: EvalTensors, qems: Sequence[float], progress: Progress = None) -> List[PlanRow]:
        """float32 and int8 baselines, then one row per QEM; each distinct plan is evaluated once."""
        ws = self.ws
        qems, all_bits, plans = ws.sweep_plans(qems)
        self.evaluate_plans(plans, data, progress)
        rows = [self.row("float32", None, data), self.row("int8", ws.uniform(BASE_BITS), data)]
        rows += [self.row("mixquant", b, data, qem=q) for q, b in zip(qems, all_bits)]
        return rows
