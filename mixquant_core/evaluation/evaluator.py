"""The evaluation policy of one model: which engine runs, the in-memory cache of metrics, the results
store's keys, early stop and dispatch to a Ray cluster.

An ``Evaluator`` is shared (the app caches one per model and settings for every browser session),
so nothing a caller may choose differently lives on it: the results store, early stop, progress
and the tally of what a call cost are arguments of every call. What it holds is the same for
every caller: the engine, the device, the cluster, the private copy of the model that
evaluations fake-quantize (under its own lock), and the cache of metrics already measured.

Plans are named: layer name -> bit-width (``None`` is the float32 model).
"""
from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set

import torch
from torch import nn

from ..data.image_sets import EvalTensors
from ..models.registry import LoadedModel
from ..quant.recipe import Quantizer, canonical, label_of
from .engines import get_engine
from .evaluate import Metrics
from .statistics import EarlyStop
from .store import EvalKey, ResultsStore, keep, mixquant_version, recall
from .timing import Throughput, measure_throughput

Named = Optional[Dict[str, int]]
Progress = Optional[Callable[[int, int, str], None]]
# Metrics kept in memory (each holds its per-image arrays: ~13 KB for 1,300 images); the least
# recently used go first, so a long-running app server stays bounded.
CACHE_ENTRIES = 2048


@dataclass
class Tally:
    """What one caller's evaluations cost: measured now, read back from the store, and the distinct
    plans seen (float32 included). Each caller keeps its own; the Evaluator only adds to it."""

    evaluated: int = 0
    from_store: int = 0
    plans: Set[tuple] = field(default_factory=set)

    @property
    def distinct(self) -> int:
        return len(self.plans)


def plan_key(named: Named, quantizer: Quantizer) -> tuple:
    """A plan as a hashable key: its (quantizer, layer -> bits) mapping; float32 has one key. A
    Recipe counts by its content (a plain one is its scheme name)."""
    return ("f32",) if named is None else (canonical(quantizer), tuple(sorted(named.items())))


class Evaluator:
    def __init__(self, loaded: LoadedModel, device: torch.device, engine: str = "auto", cluster=None,
                 notify: Optional[Callable[[str], None]] = None):
        self.loaded = loaded
        self.device = device
        self.cluster = cluster  # evaluation.cluster.RayCluster, or None: evaluate in this process
        self.engine_choice = engine  # what a cluster's nodes resolve for themselves
        # Notices (e.g. "cannot export, using torch") are said once, to ``notify``, and kept.
        self.notices: List[str] = []
        self._notify = notify
        self.engine = get_engine(engine, device, self._tell)
        self.lock = threading.RLock()  # held while the private copy is in use
        self._private: Optional[nn.Module] = None
        self._cache: "OrderedDict[tuple, Metrics]" = OrderedDict()  # (data fingerprint, plan key) -> metrics
        self._cache_lock = threading.Lock()
        self._speed: Dict[tuple, Throughput] = {}  # image shape -> measured speed (the same for every caller)

    def _tell(self, message: str) -> None:
        if message not in self.notices:
            self.notices.append(message)
            if self._notify:
                self._notify(message)

    @contextmanager
    def private_model(self) -> Iterator[nn.Module]:
        """The evaluator's own copy of the model on its device, under ``lock``: whoever changes
        weights (even for a moment) does it here, never on the shared ``loaded.model``."""
        with self.lock:
            if self._private is None:
                self._private = copy.deepcopy(self.loaded.model).to(self.device).eval()
            yield self._private

    def throughput(self, image_shape: Sequence[int]) -> Throughput:
        """This engine's speed on the float32 model for inputs of ``image_shape``, measured once."""
        shape = tuple(int(d) for d in image_shape)
        if shape not in self._speed:
            with self.private_model() as model:  # under the lock: a second caller finds it measured
                if shape not in self._speed:
                    self._speed[shape] = measure_throughput(lambda data: self.engine.evaluate(model, data), shape)
        return self._speed[shape]

    # --- keys ------------------------------------------------------------------------------
    def label(self) -> str:
        """What evaluates: ``onnxruntime-cpu`` here, ``ray-onnxruntime-cpu`` on a CPU cluster, ..."""
        if self.cluster is not None:
            return self.cluster.engine_label(self.engine_choice)
        return f"{self.engine.name}-{self.device.type}"

    def where(self) -> str:
        """Where the evaluations run, for summary lines."""
        return self.cluster.describe() if self.cluster is not None else str(self.device)

    def store_key(self, named: Named, quantizer: Quantizer, data: EvalTensors) -> EvalKey:
        return EvalKey(self.loaded.name, self.loaded.fingerprint, label_of(quantizer), None if named is None else dict(named),
                       data.fingerprint, len(data), repr(self.loaded.preprocess), self.label(), mixquant_version())

    # --- lookups ---------------------------------------------------------------------------
    def known(self, named: Named, quantizer: Quantizer, data: EvalTensors, store: Optional[ResultsStore] = None,
              early_stop: bool = False, tally: Optional[Tally] = None) -> Optional[Metrics]:
        """The plan's metrics from memory or the store, or None; nothing is evaluated. Without
        ``early_stop``, a result that stopped early does not count (it is measured again)."""
        key = (data.fingerprint, plan_key(named, quantizer))
        with self._cache_lock:
            held = self._cache.get(key)
            if held is not None:
                self._cache.move_to_end(key)
        if held is not None and (early_stop or not held.stopped_early):
            self._count(tally, named, quantizer)
            return held
        if store is None:
            return None
        got = recall(store, self.store_key(named, quantizer, data), self._tell)
        if got is None or (got.stopped_early and not early_stop) or got.images > len(data):
            return None
        self._keep(key, got)
        self._count(tally, named, quantizer, from_store=True)
        return got

    def forget(self) -> None:
        """Drop every metric held in memory (benchmarks measure evaluations, not cache reads)."""
        with self._cache_lock:
            self._cache.clear()

    def _keep(self, key: tuple, metrics: Metrics) -> None:
        with self._cache_lock:
            self._cache[key] = metrics
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)

    @staticmethod
    def _count(tally: Optional[Tally], named: Named, quantizer: Quantizer, from_store: bool = False,
               measured: bool = False) -> None:
        if tally is not None:
            tally.plans.add(plan_key(named, quantizer))
            tally.from_store += from_store
            tally.evaluated += measured

    # --- evaluation ------------------------------------------------------------------------
    def evaluate(self, named: Named, quantizer: Quantizer, data: EvalTensors, store: Optional[ResultsStore] = None,
                 early_stop: bool = False, progress: Progress = None, tally: Optional[Tally] = None) -> Metrics:
        """Metrics of one plan: from memory, else from ``store``, else measured (and stored).
        ``early_stop`` ends a hopeless plan's evaluation once it is surely below half of float32's
        top-1 (``Metrics.stopped_early``)."""
        held = self.known(named, quantizer, data, store, early_stop, tally)
        if held is not None:
            return held
        if self.cluster is not None:
            return self._measure_on_cluster([named], quantizer, data, store, progress, tally)[0]
        rule = None
        if named is not None and early_stop:
            reference = self.evaluate(None, quantizer, data, store, early_stop, None, tally)
            rule = EarlyStop.half_of(reference.top1, len(data))
        start = time.perf_counter()
        with self.private_model() as model:  # weights change in place only on this private copy
            metrics = self.engine.evaluate(model, data, named, quantizer, progress, early_stop=rule)
        seconds = time.perf_counter() - start
        self._measured(named, quantizer, data, metrics, seconds, store, tally)
        return metrics

    def evaluate_many(self, plans: Sequence[Named], quantizer: Quantizer, data: EvalTensors,
                      store: Optional[ResultsStore] = None, early_stop: bool = False, progress: Progress = None,
                      tally: Optional[Tally] = None) -> List[Metrics]:
        """Metrics of each plan in order, each distinct plan evaluated once, one progress step per
        plan (on a cluster: every plan not known yet in one batch of tasks, a step per task)."""
        distinct = list({plan_key(p, quantizer): p for p in plans}.values())
        if self.cluster is not None:
            missing = [p for p in distinct if self.known(p, quantizer, data, store, early_stop, tally) is None]
            if missing:
                self._measure_on_cluster(missing, quantizer, data, store, progress, tally)
        else:
            for k, named in enumerate(distinct):
                if progress:
                    progress(k, len(distinct), f"plan {k + 1}/{len(distinct)}")
                self.evaluate(named, quantizer, data, store, early_stop, None, tally)
            if progress:
                progress(len(distinct), len(distinct), "done")
        return [self.evaluate(p, quantizer, data, store, early_stop, None, tally) for p in plans]

    def _measure_on_cluster(self, plans: List[Named], quantizer: Quantizer, data: EvalTensors,
                            store: Optional[ResultsStore], progress: Progress, tally: Optional[Tally]) -> List[Metrics]:
        """Every plan's metrics from one batch of cluster tasks (no early stop there), kept and stored."""
        start = time.perf_counter()
        results = self.cluster.evaluate_many(self.loaded.model, self.loaded.fingerprint, plans, quantizer, data,
                                             self.engine_choice, progress)
        each = (time.perf_counter() - start) / len(plans)  # the plans ran side by side: an equal share each
        for named, metrics in zip(plans, results):
            self._measured(named, quantizer, data, metrics, each, store, tally)
        return results

    def _measured(self, named: Named, quantizer: Quantizer, data: EvalTensors, metrics: Metrics, seconds: float,
                  store: Optional[ResultsStore], tally: Optional[Tally]) -> None:
        """A plan just measured: kept in memory, counted, and kept in the store when there is one."""
        self._keep((data.fingerprint, plan_key(named, quantizer)), metrics)
        self._count(tally, named, quantizer, measured=True)
        if store is not None:
            keep(store, self.store_key(named, quantizer, data), metrics, seconds, self._tell)
