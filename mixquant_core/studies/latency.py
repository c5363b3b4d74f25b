"""Latency beside accuracy and size: an ONNX file or a plan timed against its float32 model
(``mixquant bench``, the app's Export page), and a latency column for tables of plans (``sweep
--latency``, ``sweep --compare --latency``, ``report --latency``, the Trade-off page).

Measured on what MixQuant exports: ``onnx_bytes`` of the plan, against the float graph of the same
model (models/onnx_graph.py), so an improvement of the export shows up here unchanged. A file
from outside is checked as ``mixquant load`` checks it (``read_onnx``: bounded graph, metadata
that agrees with it) and timed in a limited child (evaluation/latency_isolated.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence

from ..errors import MixQuantError, first_line
from ..evaluation.latency import DEFAULT_BATCH, DEFAULT_RUNS, Latency, measure, missing_runtime
from ..evaluation.latency_isolated import measure_isolated
from ..evaluations import PlanRow
from ..export.onnx import onnx_bytes, read_onnx
from ..export.untrusted import untrusted_text
from ..models.onnx_graph import float_onnx_bytes
from ..workspace import Workspace

Progress = Optional[Callable[[int, int, str], None]]
FLOAT32, FILE = "float32", "file"
SWEEP_RUNS = 10  # a sweep's column: batch 1 only, 10 timed images after 3 warm-up runs


@dataclass
class Bench:
    """A bench run: the file's and the float32 model's latencies on each runtime, the notices
    (a runtime missing or unable to run a model), and what was measured."""
    shown: str  # the file, or the plan, as messages name it
    model: str  # the model's name (a checked registry name, or an unverified claim)
    latencies: List[Latency] = field(default_factory=list)
    notices: List[str] = field(default_factory=list)

    def reference(self, latency: Latency) -> Optional[Latency]:
        """The float32 measurement on the same runtime."""
        return next((r for r in self.latencies if r.runtime == latency.runtime and r.model == FLOAT32), None)

    def ratios(self, latency: Latency) -> Dict[str, Optional[float]]:
        """Speed against float32 on the same runtime (> 1: faster): batch 1 (float32 ms / ms) and
        batch 32 (images/s / float32 images/s)."""
        ref = self.reference(latency)
        if ref is None:
            return {"speedup_batch1": None, "speedup_batch": None}
        batch = (latency.images_per_second / ref.images_per_second
                 if latency.images_per_second and ref.images_per_second else None)
        return {"speedup_batch1": ref.ms_per_image / latency.ms_per_image, "speedup_batch": batch}

    def table(self) -> List[dict]:
        """One row a measurement, for a data frame: the numbers and the speed against float32."""
        rows = []
        for r in self.latencies:
            ratios = self.ratios(r)
            rows.append({"runtime": r.runtime, "model": r.model, "precision": r.precision,
                         "ms/image (batch 1)": r.ms_per_image, "25 %": r.spread[0], "75 %": r.spread[1],
                         f"images/s (batch {r.batch})": r.images_per_second,
                         "x float32 (batch 1)": ratios["speedup_batch1"], f"x float32 (batch {r.batch})": ratios["speedup_batch"]})
        return rows

    def to_dict(self) -> dict:
        return {"file": self.shown, "model": self.model, "notices": list(self.notices),
                "results": [{**r.to_dict(), **self.ratios(r)} for r in self.latencies]}


def usable_runtimes(runtimes: Sequence[str], notices: List[str]) -> List[str]:
    """The runtimes this environment has; a notice for each one it lacks; an error when none is left."""
    kept = []
    for runtime in runtimes:
        missing = missing_runtime(runtime)
        if missing:
            notices.append(missing)
        else:
            kept.append(runtime)
    if not kept:
        raise MixQuantError("no runtime to measure with: " + "; ".join(notices))
    return kept


def bench_bytes(data: bytes, reference: Optional[bytes], input_shape: Sequence[int], shown: str, model: str,
                runtimes: Sequence[str], precision: str = "f32", runs: int = DEFAULT_RUNS,
                batch: int = DEFAULT_BATCH, notices: Sequence[str] = (), progress: Progress = None) -> Bench:
    """The ONNX model ``data`` and its float32 ``reference`` (None: none) timed on each runtime in one
    limited child. ONNX Runtime must run the file; another runtime that cannot is a notice."""
    out = Bench(shown, model, notices=list(notices))
    kept = usable_runtimes(runtimes, out.notices)
    models = {FLOAT32: reference, FILE: data} if reference is not None else {FILE: data}
    timings = measure_isolated(models, kept, input_shape, precision, runs, batch, shown=shown, progress=progress)
    for failed in timings.failures:
        what = f"{failed['runtime']} cannot run {shown if failed['model'] == FILE else 'the float32 model'}: " \
               f"{untrusted_text(failed['error'], 200)}"
        if failed["runtime"] == "onnxruntime" and failed["model"] == FILE:
            raise MixQuantError(what)
        out.notices.append(what + " (its rows are left out)")
    out.latencies = timings.latencies
    return out


def bench_file(path_or_bytes, model=None, **options) -> Bench:
    """An ONNX export (a file: untrusted) against its float32 model: ``model`` (checked against the
    file) or else the registry model the file names, verified; without either, the file alone."""
    from ..models.registry import build_model

    f = read_onnx(path_or_bytes, model)
    notices = list(options.pop("notices", ()))
    if model is None and f.model_name:
        model = build_model(f.model_name, pretrained=False).model  # latency needs the architecture, not the weights
    shape = (3, f.preprocess.crop, f.preprocess.crop)
    reference = float_onnx_bytes(model, shape) if model is not None else None
    if reference is None:
        notices.append(f"no float32 reference: {f.shown_as} is for {f.model_label}, not a registry model "
                       "(pass --model to compare with it)")
    bench = bench_bytes(f.data, reference, shape, f.shown_as, f.model_label, notices=notices, **options)
    if not isinstance(path_or_bytes, (bytes, bytearray)):
        bench.shown = os.fspath(path_or_bytes)  # the path itself, not its quoted form in messages
    return bench


def bench_plan(loaded, plan, data: Optional[bytes] = None, int8_weights: str = "exact", **options) -> Bench:
    """A plan, exported as ``mixquant export --format onnx [--int8-weights]`` writes it (or ``data``,
    that export already built), against its float32 model."""
    shape = (3, loaded.preprocess.crop, loaded.preprocess.crop)
    data = data if data is not None else onnx_bytes(loaded.model, plan, loaded.preprocess, int8_weights=int8_weights)
    label = f"plan ({plan.size.get('avg_bits', 0):.2f} average bits)"
    return bench_bytes(data, float_onnx_bytes(loaded.model, shape), shape, label, loaded.name, **options)


def with_latency(ws: Workspace, rows: Sequence[PlanRow], runs: int = SWEEP_RUNS, threads: Optional[int] = None,
                 progress: Progress = None, notify: Optional[Callable[[str], None]] = None) -> List[PlanRow]:
    """``rows`` with ``latency_ms``: ONNX Runtime CPU, batch 1, median ms per image of each plan's
    ONNX export (the float graph for float32), measured in this process (files it built itself);
    each distinct plan once. A plan that cannot be exported keeps None, said once through ``notify``."""
    loaded = ws.loaded
    shape = (3, loaded.preprocess.crop, loaded.preprocess.crop)
    measured: Dict[Optional[tuple], Optional[float]] = {}
    distinct = list(dict.fromkeys(r.bits for r in rows))
    told = False
    for k, bits in enumerate(distinct):
        if progress:
            progress(k, len(distinct), "latency")
        try:
            data = (float_onnx_bytes(loaded.model, shape) if bits is None else
                    onnx_bytes(loaded.model, ws.plan_from_bits(list(bits)), loaded.preprocess))
            measured[bits] = measure(data, "onnxruntime", shape, runs=runs, batch=None, threads=threads,
                                     warmup=3).ms_per_image
        except MixQuantError as exc:
            measured[bits] = None
            if notify and not told:
                told = True
                notify(f"latency not measured for some plans: {first_line(exc, 200)}")
    if progress:
        progress(len(distinct), len(distinct), "latency")
    return [replace(r, latency_ms=measured[r.bits]) for r in rows]
