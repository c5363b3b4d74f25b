"""Timing ONNX models in a child process with a time and a memory limit (the child:
latency_runner.py), so that an untrusted file that is merely slow, or large only once it runs,
costs that child and never the caller (the CLI, the app server and its other sessions).

The limits are those of model files and of ``mixquant load`` (models/isolated.py):
MIXQUANT_LOAD_TIMEOUT_S for each step (opening and timing one model on one runtime),
MIXQUANT_LOAD_MEMORY_MB of address space beyond the child's start-up. The models a caller builds
itself (the float32 reference, a plan's export) are timed in the same child, one after the
other, so that the ratios compare like with like.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..errors import MixQuantError
from .latency import DEFAULT_BATCH, DEFAULT_RUNS, Latency, default_threads

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding mixquant_core


@dataclass
class Timings:
    """What the child measured: one Latency per (runtime, model) it could run, and a one-line
    ``failures`` entry per pair it could not."""
    latencies: List[Latency] = field(default_factory=list)
    failures: List[dict] = field(default_factory=list)


def _lines(pipe, answers: "queue.Queue[Optional[bytes]]") -> None:
    for line in pipe:
        answers.put(line)
    answers.put(None)


def measure_isolated(models: Dict[str, bytes], runtimes: Sequence[str], input_shape: Sequence[int],
                     precision: str = "f32", runs: int = DEFAULT_RUNS, batch: Optional[int] = DEFAULT_BATCH,
                     threads: Optional[int] = None, shown: str = "the model",
                     progress: Optional[Callable[[int, int, str], None]] = None) -> Timings:
    """Every model (label -> ONNX bytes) on every runtime, timed in one limited child; a model past
    a limit, or a child that dies, is a MixQuantError of one line naming ``shown``. ``progress``
    hears (done, total, "runtime model") as each measurement starts, and (total, total, "done")."""
    from ..models.child_limits import EXIT_MEMORY, tail
    from ..models.isolated import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S, MEMORY_ENV, TIMEOUT_ENV, limit_setting

    timeout = limit_setting(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    memory_mb = limit_setting(MEMORY_ENV, DEFAULT_MEMORY_MB)
    workdir = Path(tempfile.mkdtemp(prefix="mixquant-latency-"))  # private (0700)
    labels = list(models)
    proc = None
    try:
        for k, label in enumerate(labels):
            (workdir / f"model-{k}.onnx").write_bytes(models[label])
        (workdir / "job.json").write_text(json.dumps({
            "models": labels, "runtimes": list(runtimes), "shape": [int(d) for d in input_shape],
            "precision": precision, "runs": int(runs), "batch": batch, "threads": int(threads or default_threads())}))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(_PACKAGE_ROOT), *(p for p in sys.path if p)]))
        with open(workdir / "stderr", "w+b") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "mixquant_core.evaluation.latency_runner", str(workdir),
                                     str(int(memory_mb))], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=stderr, env=env, cwd=str(workdir))
            answers: "queue.Queue[Optional[bytes]]" = queue.Queue()
            threading.Thread(target=_lines, args=(proc.stdout, answers), daemon=True).start()
            out, doing, started, total = Timings(), "starting", 0, len(labels) * len(runtimes)
            while True:
                try:
                    line = answers.get(timeout=timeout)
                except queue.Empty:
                    raise MixQuantError(f"timing {shown} took longer than {timeout:g} s ({doing}) and was stopped "
                                        f"(time limit, {TIMEOUT_ENV})") from None
                answer = json.loads(line) if line else None
                if answer is None:
                    try:
                        code = proc.wait(timeout=30)  # its output has ended: it is ending too
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        code = proc.wait()
                    if code == EXIT_MEMORY:
                        raise MixQuantError(f"timing {shown} needed more than {memory_mb:g} MB ({doing}) and was "
                                            f"stopped (memory limit, {MEMORY_ENV})")
                    last = (tail(stderr).strip().splitlines() or [""])[-1][:300]
                    raise MixQuantError(f"timing {shown} stopped ({doing}; exit {code}): {last}")
                if answer.get("done"):
                    if progress:
                        progress(total, total, "done")
                    return out
                if "start" in answer:
                    doing = f"{answer['start']}"
                    if progress:
                        progress(started, total, doing)
                    started += 1
                elif "latency" in answer:
                    out.latencies.append(Latency.from_dict(answer["latency"]))
                elif "failed" in answer:
                    out.failures.append(answer["failed"])
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
        shutil.rmtree(workdir, ignore_errors=True)
