"""Latency as a measured axis: median milliseconds per image at batch 1 and images per second at
batch 32 of an ONNX model, on this machine's ONNX Runtime CPU provider or OpenVINO's CPU plugin.

``measure`` builds the runtime's session from the model's bytes, runs ``warmup`` batches (one-off
work: kernel choice, memory arenas), then times ``runs`` single images one by one (the median, and
the 25th to 75th percentile as the spread) and ``max(2, runs // 10)`` batches of ``batch`` images
(images/s from their median). Inputs are random pixels, which cost what real ones do. Both runtimes
get the same thread count (default: the cores this process may use). OpenVINO compiles the model
once per batch size (static shapes) with ``INFERENCE_PRECISION_HINT`` f32 unless bf16 is asked
for; the precision it really used is recorded (a CPU without bf16 runs f32).

Imports no torch and no other stage, so that the limited child that times untrusted files
(latency_runner.py) starts fast; latency_isolated.py is its parent's side.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence, Tuple

import numpy as np

RUNTIMES = ("onnxruntime", "openvino")
PRECISIONS = ("f32", "bf16")
DEFAULT_RUNS = 30  # timed single images; batches: a tenth of that, at least 2
DEFAULT_BATCH = 32
DEFAULT_WARMUP = 5


@dataclass(frozen=True)
class Latency:
    """One model on one runtime: ``ms_per_image`` (batch 1, median of ``runs``), its 25th-75th
    percentile ``spread``, and ``images_per_second`` at ``batch`` (None: not measured)."""
    runtime: str
    precision: str  # what the runtime computed in (OpenVINO's answer; ONNX Runtime's CPU provider: f32)
    ms_per_image: float
    spread: Tuple[float, float]
    images_per_second: Optional[float]
    runs: int
    threads: int
    batch: Optional[int]
    model: str = ""  # what was measured: "float32", "file", a plan's label

    def to_dict(self) -> dict:
        out = asdict(self)
        out["spread"] = list(self.spread)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Latency":
        return cls(str(d["runtime"]), str(d["precision"]), float(d["ms_per_image"]),
                   (float(d["spread"][0]), float(d["spread"][1])),
                   None if d.get("images_per_second") is None else float(d["images_per_second"]),
                   int(d["runs"]), int(d["threads"]), None if d.get("batch") is None else int(d["batch"]),
                   str(d.get("model", "")))


def missing_runtime(runtime: str) -> Optional[str]:
    """None when ``runtime`` can be imported here, else the one-line notice saying it is skipped."""
    try:
        if runtime == "openvino":
            import openvino  # noqa: F401
        else:
            import onnxruntime  # noqa: F401
    except ImportError:
        return f"{runtime} is not installed: its rows are left out (pip install {runtime})"
    return None


def default_threads() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


Runner = Callable[[np.ndarray], object]


def _onnxruntime(model_bytes: bytes, precision: str, threads: int):
    """(compile(batch) -> run(x), precision used): one session serves every batch size."""
    from .ort_session import ort_session

    session = ort_session(model_bytes, threads)
    name = session.get_inputs()[0].name
    return (lambda batch: (lambda x: session.run(None, {name: x}))), "f32"


def _openvino(model_bytes: bytes, precision: str, threads: int):
    """(compile(batch) -> run(x), precision used): the model read from bytes, compiled per batch size."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(model=model_bytes, weights=b"")
    config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY"}
    shape = list(model.inputs[0].get_partial_shape())
    used = []

    def compile_for(batch: int) -> Runner:
        model.reshape([batch, *[d.get_length() for d in shape[1:]]])
        compiled = core.compile_model(model, "CPU", config)
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type: "f32", "bf16"
        used.append(hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint))
        request = compiled.create_infer_request()
        return lambda x: request.infer({0: x})

    compile_for(1)  # the precision it really uses, known before any timing
    return compile_for, used[0]


_BACKENDS = {"onnxruntime": _onnxruntime, "openvino": _openvino}


def _times(run: Runner, x: np.ndarray, warmup: int, runs: int) -> np.ndarray:
    for _ in range(warmup):
        run(x)
    out = np.empty(runs)
    for k in range(runs):
        start = time.perf_counter()
        run(x)
        out[k] = time.perf_counter() - start
    return out


def measure(model_bytes: bytes, runtime: str, input_shape: Sequence[int], precision: str = "f32",
            runs: int = DEFAULT_RUNS, batch: Optional[int] = DEFAULT_BATCH, threads: Optional[int] = None,
            warmup: int = DEFAULT_WARMUP, model: str = "") -> Latency:
    """The latency of the ONNX model ``model_bytes`` (input ``[N, *input_shape]``) on ``runtime``;
    ``batch=None`` measures batch 1 only (cheap: what sweeps use)."""
    if runtime not in _BACKENDS:
        raise ValueError(f"unknown runtime {runtime!r} (one of {', '.join(RUNTIMES)})")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (one of {', '.join(PRECISIONS)})")
    threads = int(threads or default_threads())
    compile_for, used = _BACKENDS[runtime](model_bytes, precision, threads)
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, *input_shape), dtype=np.float32)
    single = _times(compile_for(1), one, warmup, runs) * 1e3
    ips = None
    if batch:
        many = rng.standard_normal((batch, *input_shape), dtype=np.float32)
        ips = batch / float(np.median(_times(compile_for(batch), many, 1, max(2, runs // 10))))
    q25, q50, q75 = np.percentile(single, [25, 50, 75])
    return Latency(runtime, used, float(q50), (float(q25), float(q75)), ips, runs, threads, batch, model)
