"""A Workspace ties one model to its layers, QE table, plans, sizes and evaluations.

It is the single place where the numbers that the CLI prints, the app shows and the tests check
are computed; everything expensive is cached on it (QE table, decoded images, per-plan metrics).

Evaluations (and the Fisher pass) fake-quantize weights in place, so they run on the workspace's
private copy of the model under its own lock: ``loaded.model`` is never changed, and readers of it
(QE table, export, other sessions of the app drawing their pages) never wait for an evaluation.
"""
from __future__ import annotations

import copy
import math
import threading
from contextlib import contextmanager
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
from torch import nn

from .data.image_sets import EvalTensors
from .errors import MixQuantError
from .evaluation.cluster import RayCluster
from .evaluation.engines import get_engine
from .evaluation.evaluate import Metrics
from .models.devices import resolve_device
from .evaluation.statistics import EarlyStop
from .evaluation.store import EvalKey, ResultsStore, mixquant_version
from .models.layers import LayerInfo, find_layers, pinned_mask
from .models.registry import LoadedModel
from .plans.plan import Plan, make_plan
from .quant.qe import BASE_BITS, DEFAULT_BITS, QETable, normalize_bits, qe_table
from .plans.search import PlanFamily, breakpoints, check_qem, search_many
from .plans.size import SizeSummary, float32_bytes, plan_size

Progress = Optional[Callable[[int, int, str], None]]


@dataclass(frozen=True)
class SweepRow:
    """One row of the paper's Table 2, plus size columns."""

    method: str  # float32 | int8 | mixquant
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

    def to_dict(self) -> dict:
        out = asdict(self)
        for k in ("top1_ci", "top5_ci"):
            out[k] = list(out[k]) if out[k] is not None else None
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


SWEEP_COLUMNS = list(flat_stats(SweepRow("", None, "", 0, 0, 0, None, 0, 0, 0).to_dict()))


class Workspace:
    def __init__(self, loaded: LoadedModel, quantizer: str = "asymmetric", bits: Sequence[int] = DEFAULT_BITS,
                 keep_first_last: bool = False, exclude: Sequence[str] = (), device: str = "auto",
                 engine: str = "auto", notify: Optional[Callable[[str], None]] = None,
                 store: Optional[ResultsStore] = None, early_stop: bool = False, cluster: Optional[RayCluster] = None):
        self.loaded = loaded
        self.store = store  # results kept across runs (evaluation/store.py); None = memory only
        # Evaluations run as (plan, shard) tasks on a Ray cluster (evaluation/cluster.py); None = here.
        self.cluster = cluster
        # Stop evaluating a plan once it is surely below half of float32's top-1 (statistics.EarlyStop).
        self.early_stop = early_stop
        self.evaluated_now = 0  # evaluations actually run by this Workspace (not from cache or store)
        self.from_store = 0  # evaluations read back from the store
        self.quantizer = quantizer
        self.bits = normalize_bits(bits)
        self.device = resolve_device(device)
        # Evaluation only (auto: ONNX Runtime on CPU, torch on CUDA); QE, Fisher and reconstruction stay torch.
        # Notices (e.g. "cannot export, using torch") go to ``notify``, and are kept in ``notices``.
        self.notices: List[str] = []

        def tell(message: str) -> None:
            if message not in self.notices:
                self.notices.append(message)
                if notify:
                    notify(message)

        self.engine_choice = engine  # what a cluster's nodes resolve for themselves
        self.engine = get_engine(engine, self.device, tell)
        self.layers: List[LayerInfo] = find_layers(loaded.model, exclude)
        if not self.layers:
            raise MixQuantError("no quantizable layer left (every Conv/Linear layer was excluded or the model has none)")
        self.pinned = pinned_mask(self.layers, keep_first_last)
        self.float_bytes = float32_bytes(loaded.model)
        self._table: Optional[QETable] = None
        self._family: Optional[PlanFamily] = None
        self._metrics: Dict[tuple, Metrics] = {}
        self._metrics_data: Optional[str] = None
        self._fisher = None  # (calibration set, FisherTable); holding the set keeps its id unique
        self._allocations: Dict[tuple, object] = {}  # (cost, unit) -> allocation family
        self.lock = threading.RLock()  # held while the private copy is in use (evaluations, Fisher)
        self._table_lock = threading.Lock()  # the QE table is computed once, without waiting on evaluations
        self._private: Optional[nn.Module] = None

    @contextmanager
    def private_model(self) -> Iterator[nn.Module]:
        """The workspace's own copy of the model on its device, under ``lock``: whoever changes
        weights (even for a moment) does it here, never on the shared ``loaded.model``."""
        with self.lock:
            if self._private is None:
                self._private = copy.deepcopy(self.loaded.model).to(self.device).eval()
            yield self._private

    # --- QE table and search ---------------------------------------------------------------
    def table(self, progress: Progress = None) -> QETable:
        with self._table_lock:
            if self._table is None:
                self._table = qe_table(self.loaded.model, self.quantizer, self.bits, self.layers,
                                       device=self.device, progress=progress)
        return self._table

    def family(self) -> PlanFamily:
        if self._family is None:
            self._family = breakpoints(self.table(), self.pinned)
        return self._family

    def bits_for(self, qems: Sequence[float]) -> np.ndarray:
        return search_many(self.table(), qems, self.pinned)

    def uniform(self, b: int) -> np.ndarray:
        return np.full(len(self.layers), int(b), dtype=np.int64)

    def size(self, bits: Sequence[int]) -> SizeSummary:
        return plan_size(self.float_bytes, self.layers, bits, self.quantizer)

    def plan(self, qem: float) -> Plan:
        qem = check_qem(qem)
        return make_plan(self.loaded.identity, self.table(), self.bits_for([qem])[0], qem, self.float_bytes)

    def plan_from_bits(self, bits: Sequence[int], qem: Optional[float] = None, extra: Optional[dict] = None) -> Plan:
        return make_plan(self.loaded.identity, self.table(), bits, qem, self.float_bytes, extra)

    def quant_mse(self, bits: Sequence[int]) -> float:
        table = self.table()
        cols = [table.bits.index(int(b)) for b in bits]
        qe = table.qe[np.arange(len(bits)), cols]
        return float(np.dot(qe, table.params) / table.params.sum())

    def qem_for_budget(self, max_mb: Optional[float] = None, avg_bits: Optional[float] = None) -> float:
        """Smallest QEM (the most bits) whose plan fits the budget: size <= max_mb or average
        bits <= avg_bits. Size falls monotonically as QEM grows, so the first fit is the best one."""
        if (max_mb is None) == (avg_bits is None):
            raise MixQuantError("give exactly one budget: a size in MB or an average bit-width")
        fam = self.family()
        for qem, bits in zip(fam.qems, fam.bits):
            s = self.size(bits)
            if (max_mb is not None and s.plan_mb <= max_mb) or (avg_bits is not None and s.avg_bits <= avg_bits + 1e-9):
                return float(qem)
        smallest = self.size(fam.bits[-1])
        raise MixQuantError(f"no QEM plan fits that budget: the smallest is {smallest.plan_mb:.2f} MB at "
                            f"{smallest.avg_bits:.2f} average bits")

    # --- evaluation ------------------------------------------------------------------------
    def evaluate_bits(self, bits: Optional[Sequence[int]], data: EvalTensors, progress: Progress = None) -> Metrics:
        """Metrics of the float32 model (``bits=None``) or of per-layer ``bits`` (model order)."""
        return self._evaluate(self._named(bits), self.quantizer, data, progress)

    def _named(self, bits: Optional[Sequence[int]]) -> Optional[Dict[str, int]]:
        """Per-layer ``bits`` (model order) as layer name -> bits; None (float32) stays None."""
        return None if bits is None else {layer.name: int(b) for layer, b in zip(self.layers, bits)}

    @staticmethod
    def _distinct(plans: Sequence[Optional[Sequence[int]]]) -> List[Optional[tuple]]:
        """Each plan once, in first-seen order (``None`` = float32)."""
        return list(dict.fromkeys(None if b is None else tuple(int(x) for x in b) for b in plans))

    def evaluate_plan(self, plan: Plan, data: EvalTensors, progress: Progress = None) -> Metrics:
        """Metrics of a loaded plan (its own quantizer and layers), after checking it fits the model."""
        plan.check_against(self.loaded.model)
        return self._evaluate(plan.bits, plan.quantizer, data, progress)

    def _evaluate(self, named: Optional[Dict[str, int]], quantizer: str, data: EvalTensors, progress: Progress,
                  cached_only: bool = False) -> Optional[Metrics]:
        # One cache per evaluation set, keyed by its content (never id(): a new set can reuse a
        # freed address); a plan is its (quantizer, layer -> bits) mapping. Behind it, the store.
        if self._metrics_data != data.fingerprint:
            self._metrics, self._metrics_data = {}, data.fingerprint
        key = self._cache_key(named, quantizer)
        held = self._metrics.get(key)
        if held is None or (held.stopped_early and not self.early_stop):
            held = self._stored(named, quantizer, data)
            if held is None:
                if cached_only:
                    return None
                held = self._measure(named, quantizer, data, progress)
            self._metrics[key] = held
        return held

    @staticmethod
    def _cache_key(named: Optional[Dict[str, int]], quantizer: str) -> tuple:
        return ("f32",) if named is None else (quantizer, tuple(named.items()))

    def engine_label(self) -> str:
        """What evaluates: ``onnxruntime-cpu`` here, ``ray-onnxruntime-cpu`` on a CPU cluster, ..."""
        if self.cluster is not None:
            return self.cluster.engine_label(self.engine_choice)
        return f"{self.engine.name}-{self.device.type}"

    def store_key(self, named: Optional[Dict[str, int]], quantizer: str, data: EvalTensors) -> EvalKey:
        return EvalKey(self.loaded.name, self.loaded.fingerprint, quantizer, None if named is None else dict(named),
                       data.fingerprint, len(data), repr(self.loaded.preprocess), self.engine_label(),
                       mixquant_version())

    def _stored(self, named, quantizer: str, data: EvalTensors) -> Optional[Metrics]:
        if self.store is None:
            return None
        got = self.store.get(self.store_key(named, quantizer, data))
        if got is None or (got.stopped_early and not self.early_stop) or got.images > len(data):
            return None
        self.from_store += 1
        return got

    def _measure(self, named, quantizer: str, data: EvalTensors, progress: Progress) -> Metrics:
        if self.cluster is not None:
            return self._measure_on_cluster([named], quantizer, data, progress)[0]
        rule = None
        if named is not None and self.early_stop:
            rule = EarlyStop.half_of(self._evaluate(None, quantizer, data, None).top1, len(data))
        start = time.perf_counter()
        with self.private_model() as model:  # weights change in place only on this private copy
            metrics = self.engine.evaluate(model, data, named, quantizer, progress, early_stop=rule)
        self.evaluated_now += 1
        if self.store is not None:
            self.store.put(self.store_key(named, quantizer, data), metrics, time.perf_counter() - start)
        return metrics

    def _measure_on_cluster(self, plans: List[Optional[Dict[str, int]]], quantizer: str, data: EvalTensors,
                            progress: Progress) -> List[Metrics]:
        """Every plan's metrics from one batch of cluster tasks (no early stop there), stored."""
        start = time.perf_counter()
        results = self.cluster.evaluate_many(self.loaded.model, self.loaded.fingerprint, plans, quantizer, data,
                                             self.engine_choice, progress)
        self.evaluated_now += len(plans)
        if self.store is not None:
            each = (time.perf_counter() - start) / len(plans)  # the plans ran side by side: an equal share each
            for named, metrics in zip(plans, results):
                self.store.put(self.store_key(named, quantizer, data), metrics, each)
        return results

    def has_results(self, plans: Sequence[Optional[Sequence[int]]], data: EvalTensors) -> bool:
        """True when every plan (``None`` = float32) is known from the cache or the store: nothing to evaluate."""
        for bits in self._distinct(plans):
            if self._evaluate(self._named(bits), self.quantizer, data, None, cached_only=True) is None:
                return False
        return True

    def evaluate_plans(self, plans: Sequence[Optional[Sequence[int]]], data: EvalTensors, progress: Progress = None) -> None:
        """Evaluate each distinct plan of ``plans`` once (``None`` = float32), one progress step per plan
        (on a cluster: every plan not known yet in one batch of tasks, a step per task)."""
        distinct = self._distinct(plans)
        if self.cluster is not None:
            missing = [self._named(b) for b in distinct
                       if self._evaluate(self._named(b), self.quantizer, data, None, cached_only=True) is None]
            if missing:
                for named, metrics in zip(missing, self._measure_on_cluster(missing, self.quantizer, data, progress)):
                    self._metrics[self._cache_key(named, self.quantizer)] = metrics
            return
        for k, bits in enumerate(distinct):
            if progress:
                progress(k, len(distinct), f"plan {k + 1}/{len(distinct)}")
            self.evaluate_bits(bits, data)
        if progress:
            progress(len(distinct), len(distinct), "done")

    def row(self, method: str, bits: Optional[Sequence[int]], data: EvalTensors, qem: Optional[float] = None,
            progress: Progress = None) -> SweepRow:
        m = self.evaluate_bits(bits, data, progress)
        ci = m.intervals()
        stats = dict(top1_ci=tuple(ci["top1_ci"]), top5_ci=tuple(ci["top5_ci"]), images=m.images,
                     stopped_early=m.stopped_early)
        if bits is None:
            return SweepRow(method, None, "all float32", m.top1, m.top5, m.loss, None, 32.0,
                            self.float_bytes / 1e6, 1.0, **stats)
        s = self.size(bits)
        bit_set = ", ".join(str(b) for b in sorted(set(int(b) for b in bits)))
        vs = m.versus(self.evaluate_bits(None, data)).to_dict()
        return SweepRow(method, qem, bit_set, m.top1, m.top5, m.loss, self.quant_mse(bits), s.avg_bits,
                        s.plan_mb, s.compression, vs_float32=vs, **stats)

    def sweep_plans(self, qems: Sequence[float]) -> tuple:
        """(QEMs checked, their bits [Q, L], every plan a sweep evaluates: float32, int8, the QEMs')."""
        qems = [check_qem(q) for q in qems]
        all_bits = self.bits_for(qems) if qems else np.zeros((0, len(self.layers)), dtype=np.int64)
        return qems, all_bits, [None, tuple(self.uniform(BASE_BITS))] + [tuple(b) for b in all_bits]

    def sweep(self, data: EvalTensors, qems: Sequence[float], progress: Progress = None) -> List[SweepRow]:
        """float32 and int8 baselines, then one row per QEM; each distinct plan is evaluated once."""
        qems, all_bits, plans = self.sweep_plans(qems)
        self.evaluate_plans(plans, data, progress)
        rows = [self.row("float32", None, data), self.row("int8", self.uniform(BASE_BITS), data)]
        rows += [self.row("mixquant", b, data, qem=q) for q, b in zip(qems, all_bits)]
        return rows

    @property
    def distinct_evaluated(self) -> int:
        return len(self._metrics)

    # --- budgeted allocation (sensitivity.py + allocate.py) ----------------------------------
    def fisher(self, calib: EvalTensors, progress: Progress = None):
        """Fisher-weighted error table on calibration images, cached per calibration set."""
        from .plans.fisher import fisher_table

        with self.private_model() as model:  # gradients and requires_grad flags: the private copy
            held = self._fisher
            if held is None or held[0] is not calib:
                table = fisher_table(model, self.layers, calib, self.quantizer, self.bits, self.device, progress)
                self._fisher = (calib, table)
                self._allocations.clear()
            return self._fisher[1]

    def allocation_family(self, cost: str = "qe", unit: str = "bytes", calib: Optional[EvalTensors] = None):
        """Every Lagrangian-optimal plan for summed ``cost`` ("qe" or "fisher") under a budget in
        ``unit`` ("bytes" of the model, or "bits" = params x bit-width), cached."""
        from .plans.allocate import allocation_family

        if cost not in ("qe", "fisher"):
            raise MixQuantError(f"unknown allocation cost '{cost}'; choose qe or fisher")
        if cost == "fisher" and calib is None:
            raise MixQuantError("the Fisher cost needs calibration images (--calib DIR)")
        costs = self.cost_table(cost, calib)  # may refresh the Fisher table (and clear this cache)
        key = (cost, unit)
        cache = self._allocations
        if key not in cache:
            cache[key] = allocation_family(self.bits, self.budget_weights(unit), costs, self.pinned)
        return cache[key]

    def cost_table(self, cost: str, calib: Optional[EvalTensors] = None) -> np.ndarray:
        """[L, B] summed-cost terms: plain QE, or the Fisher-weighted error."""
        return self.table().qe if cost == "qe" else self.fisher(calib).cost

    def budget_weights(self, unit: str) -> np.ndarray:
        """[L, B] what a budget counts: bytes of each quantized layer, or params x bit-width."""
        from .plans.size import quantized_layer_bytes

        if unit == "bytes":
            rows = [[quantized_layer_bytes(l, b, self.quantizer) for b in self.bits] for l in self.layers]
        else:
            rows = [[l.params * b for b in self.bits] for l in self.layers]
        return np.array(rows, dtype=np.float64)

    def budget_bits(self, cost: str = "qe", max_mb: Optional[float] = None, avg_bits: Optional[float] = None,
                    calib: Optional[EvalTensors] = None) -> np.ndarray:
        """Bit-widths of least summed ``cost`` whose size is <= max_mb or average bits <= avg_bits."""
        from .plans.allocate import allocate

        if (max_mb is None) == (avg_bits is None):
            raise MixQuantError("give exactly one budget: a size in MB or an average bit-width")
        for value in (max_mb, avg_bits):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise MixQuantError(f"a budget must be a positive number, got {value!r}")
        unit = "bytes" if max_mb is not None else "bits"
        fam = self.allocation_family(cost, unit, calib)
        total_params = sum(l.params for l in self.layers)
        if max_mb is not None:  # bytes left for the quantized layers once the float32 rest is paid
            budget = max_mb * 1e6 - (self.float_bytes - 4 * total_params)
        else:
            budget = avg_bits * total_params
        if budget < fam.weight[-1] - 1e-9:
            low = self.size(fam.bits[-1])
            raise MixQuantError(f"no plan fits that budget: the smallest is {low.plan_mb:.2f} MB at "
                                f"{low.avg_bits:.2f} average bits")
        return allocate(self.bits, self.budget_weights(unit), self.cost_table(cost, calib), budget, self.pinned,
                        family=fam)
