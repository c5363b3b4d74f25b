"""The child process that runs an untrusted ONNX file in ONNX Runtime (its parent: onnx_isolated.py).

Run as a script, by path (``python .../onnx_runner.py WORKDIR MEMORY_MB THREADS``), never as
``python -m mixquant_core...``: the package's ``__init__`` imports torch and every stage, seconds
per child, and this side needs numpy and onnxruntime only. It caps its own address space
(models/child_limits.py, loaded by path for the same reason), opens WORKDIR/model.onnx, and then
answers one JSON line per request on its stdin:

    {"input": "in-3.npy", "output": "out-3.npy"}  ->  {"ok": true}  |  {"error": "..."}

Arrays travel as .npy files in WORKDIR (a private folder of the parent), lines through the pipes:
a request line never fills a pipe, so the parent can always wait on the answer with a time limit.
The first line it writes answers the opening: {"ok": true, "inputs": [...], "outputs": [...]}.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

_MEMORY_WORDS = ("bad_alloc", "Failed to allocate", "out of memory")  # ORT's allocation failures


def _child_limits():
    path = Path(__file__).resolve().parents[1] / "models" / "child_limits.py"
    spec = importlib.util.spec_from_file_location("mixquant_child_limits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _protocol_stream():
    """The pipe the parent reads, moved off fd 1: whatever ORT's native code prints goes to stderr
    and can never be taken for an answer."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _open(workdir: Path, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    # As the evaluation engine's sessions (onnxruntime_engine.new_session, which this module must not
    # import): a transformer's fused int4 MatMul in float32, and 2-bit Linear layers loadable.
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    return ort.InferenceSession(str(workdir / "model.onnx"), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=["TransposeOptimizer"])


def _signature(args) -> list:
    return [[a.name, [d if isinstance(d, int) else None for d in a.shape]] for a in args]


def _is_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or any(w in str(exc) for w in _MEMORY_WORDS)


def _first_line(exc: BaseException) -> str:
    """The message's first line, without ORT's "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : " prefix."""
    lines = str(exc).strip().splitlines()
    line = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", lines[0]) if lines else type(exc).__name__
    return line[:500]


def _serve(session, workdir: Path, out) -> None:
    name = session.get_inputs()[0].name
    for line in sys.stdin:
        request = json.loads(line)
        x = np.load(workdir / request["input"], allow_pickle=False)
        y = np.asarray(session.run(None, {name: x})[0])
        np.save(workdir / request["output"], y, allow_pickle=False)
        out.write(json.dumps({"ok": True}) + "\n")


def main(argv) -> int:
    workdir, memory_mb, threads = Path(argv[0]), int(argv[1]), int(argv[2])
    limits = _child_limits()
    limits.die_with_parent()
    out = _protocol_stream()
    limits.limit_memory(memory_mb)  # after the imports: the limit is on what the file makes us allocate
    try:
        session = _open(workdir, threads)
        out.write(json.dumps({"ok": True, "inputs": _signature(session.get_inputs()),
                              "outputs": _signature(session.get_outputs())}) + "\n")
        _serve(session, workdir, out)
    except Exception as exc:
        if _is_memory(exc):
            return limits.EXIT_MEMORY
        out.write(json.dumps({"error": _first_line(exc)}) + "\n")
        return limits.EXIT_USER
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
