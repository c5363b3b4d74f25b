"""The child process that times ONNX models (its parent: latency_isolated.py), with limits.

Run as ``python -m mixquant_core.evaluation.latency_runner WORKDIR MEMORY_MB``: the packages on the
way are lazy, so it imports numpy, the runtimes and latency.py only, never torch. It caps its own
address space (models/child_limits.py, loaded by path: models/__init__ imports torch), reads
WORKDIR/job.json ({"models": [label, ...], "runtimes", "shape", "precision", "runs", "batch",
"threads"}; model k is WORKDIR/model-k.onnx) and writes one JSON line per step on its stdout:

    {"start": "openvino file"}                                     before each measurement
    {"latency": {...Latency.to_dict()}}                            after it
    {"failed": {"runtime": ..., "model": ..., "error": "..."}}     a runtime that cannot run a model
    {"done": true}

so the parent can wait on each line with a time limit. Every runtime measures the models in the
job's order, one after the other, in this one process: the same conditions for the float32
reference and the file.
"""
from __future__ import annotations

import json
import os
import re
import runpy
import sys
from pathlib import Path

from mixquant_core.evaluation.latency import measure

_MEMORY_WORDS = ("bad_alloc", "Failed to allocate", "out of memory")  # the runtimes' allocation failures


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    line = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", lines[0]) if lines else type(exc).__name__
    return line[:300]


def _run(workdir: Path, job: dict, say) -> None:
    for runtime in job["runtimes"]:
        for k, label in enumerate(job["models"]):
            say({"start": f"{runtime} {label}"})
            data = (workdir / f"model-{k}.onnx").read_bytes()
            try:
                latency = measure(data, runtime, job["shape"], job["precision"], job["runs"], job["batch"],
                                  job["threads"], model=label)
            except Exception as exc:  # the runtime refuses this model (an op or a type it lacks)
                if any(word in str(exc) for word in _MEMORY_WORDS):
                    raise MemoryError from None
                say({"failed": {"runtime": runtime, "model": label, "error": _one_line(exc)}})
                continue
            say({"latency": latency.to_dict()})
    say({"done": True})


def main(argv) -> int:
    workdir, memory_mb = Path(argv[0]), int(argv[1])
    limits = runpy.run_path(str(Path(__file__).resolve().parents[1] / "models" / "child_limits.py"))
    limits["die_with_parent"]()
    out = os.fdopen(os.dup(1), "w", buffering=1)  # the answers; the runtimes' own prints go to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    job = json.loads((workdir / "job.json").read_text())
    for runtime in job["runtimes"]:  # imported before the limit: it is on what the models make us allocate
        __import__(runtime)
    limits["limit_memory"](memory_mb)
    try:
        _run(workdir, job, lambda answer: out.write(json.dumps(answer) + "\n"))
    except MemoryError:
        return limits["EXIT_MEMORY"]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
