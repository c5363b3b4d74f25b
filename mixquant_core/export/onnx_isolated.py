"""ONNX Runtime on an untrusted file, in a child process with a time and a memory limit.

The checks of onnx_checks.py refuse what can be seen in the graph (loops, allocations sized by
data, huge shapes); what they cannot bound - a graph that is merely slow, or large only once it
runs, or an ORT bug - costs the child (onnx_runner.py), never the caller (the CLI, the app server
and its other sessions). The limits are those of model files (models/isolated.py):
MIXQUANT_LOAD_TIMEOUT_S for opening the file and again for each batch, MIXQUANT_LOAD_MEMORY_MB of
address space beyond the child's start-up.

``IsolatedSession`` answers ``get_inputs()`` and ``run(None, {name: array})`` as an ORT
InferenceSession does, so the engines' ``run_session`` evaluates through it unchanged (the same
metrics code, the same numbers as an in-process session).
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
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..models.child_limits import EXIT_MEMORY, tail
from ..models.isolated import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S, MEMORY_ENV, TIMEOUT_ENV, limit_setting
from .untrusted import OnnxFileError, untrusted_text

RUNNER = Path(__file__).resolve().with_name("onnx_runner.py")


@dataclass(frozen=True)
class NodeArg:
    """What ``InferenceSession.get_inputs()`` lists: a name and a shape (None where dynamic)."""
    name: str
    shape: List[Optional[int]]


class IsolatedSession:
    def __init__(self, model_bytes: bytes, shown: str, threads: Optional[int] = None):
        from ..data.image_sets import usable_cores

        self.shown = shown
        self.timeout = limit_setting(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
        self.memory_mb = limit_setting(MEMORY_ENV, DEFAULT_MEMORY_MB)
        self._dir = Path(tempfile.mkdtemp(prefix="mixquant-onnx-"))  # private (0700): the arrays pass here
        self._proc = None
        self._calls = 0
        try:
            (self._dir / "model.onnx").write_bytes(model_bytes)
            self._start(threads or usable_cores())
            opened = self._answer("opening it")
            self.inputs = [NodeArg(n, s) for n, s in opened["inputs"]]
            self.outputs = [NodeArg(n, s) for n, s in opened["outputs"]]
        except BaseException:
            self.close()
            raise

    # --- the child --------------------------------------------------------------------------------
    def _start(self, threads: int) -> None:
        self._stderr = open(self._dir / "stderr", "w+b")
        # The child imports numpy and onnxruntime from this process's import path.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self._proc = subprocess.Popen(
            [sys.executable, str(RUNNER), str(self._dir), str(int(self.memory_mb)), str(int(threads))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        self._answers: "queue.Queue[Optional[bytes]]" = queue.Queue()
        threading.Thread(target=self._read_answers, args=(self._proc.stdout,), daemon=True).start()

    def _read_answers(self, pipe) -> None:
        """A thread: the child's lines into a queue, then None at its end (the parent waits on the
        queue with a time limit; a read on the pipe itself could not be given one portably)."""
        for line in pipe:
            self._answers.put(line)
        self._answers.put(None)

    def _answer(self, doing: str) -> dict:
        try:
            line = self._answers.get(timeout=self.timeout)
        except queue.Empty:
            self.close(kill=True)  # busy past its limit: it would not stop at the end of its input
            raise OnnxFileError(f"ONNX Runtime took longer than {self.timeout:g} s {doing} ({self.shown}) and was "
                                f"stopped (time limit, {TIMEOUT_ENV})") from None
        try:
            answer = json.loads(line) if line else None
        except ValueError:
            answer = None
        if answer and "error" in answer:
            self.close()
            raise OnnxFileError(f"ONNX Runtime cannot run {self.shown}: {untrusted_text(answer['error'], 300)}")
        if not answer:
            raise self._ended(doing)
        return answer

    def _ended(self, doing: str) -> OnnxFileError:
        """The error for a child that stopped without answering."""
        try:
            code = self._proc.wait(timeout=5)  # its output has ended: it is ending too
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        message = (tail(self._stderr).strip().splitlines() or [""])[-1]
        self.close()
        if code == EXIT_MEMORY:
            return OnnxFileError(f"ONNX Runtime needed more than {self.memory_mb:g} MB {doing} ({self.shown}) and was "
                                 f"stopped (memory limit, {MEMORY_ENV})")
        if code < 0:
            return OnnxFileError(f"ONNX Runtime crashed {doing} ({self.shown}; signal {-code}; out of memory? limit "
                                 f"{MEMORY_ENV}={self.memory_mb:g} MB)")
        return OnnxFileError(f"ONNX Runtime stopped {doing} ({self.shown}): {untrusted_text(message, 300) or code}")

    # --- what an InferenceSession answers ---------------------------------------------------------
    def get_inputs(self) -> List[NodeArg]:
        return list(self.inputs)

    def run(self, output_names, feed: dict) -> list:
        if self._proc is None:
            raise OnnxFileError(f"the ONNX Runtime child of {self.shown} has been closed")
        (x,) = feed.values()
        self._calls += 1
        name_in, name_out = f"in-{self._calls}.npy", f"out-{self._calls}.npy"
        np.save(self._dir / name_in, np.ascontiguousarray(x, dtype=np.float32), allow_pickle=False)
        try:
            self._proc.stdin.write((json.dumps({"input": name_in, "output": name_out}) + "\n").encode())
            self._proc.stdin.flush()
        except OSError:  # the child is gone: its exit code says why
            raise self._ended("running a batch") from None
        self._answer("running a batch")
        y = self._read_output(self._dir / name_out, len(x))
        for name in (name_in, name_out):
            (self._dir / name).unlink(missing_ok=True)
        return [y]

    def _read_output(self, path: Path, rows: int) -> np.ndarray:
        """The logits the child wrote, their shape read before their data: an output far larger
        than the graph declares must not be loaded into this process."""
        classes = self.outputs[0].shape[-1] if self.outputs and self.outputs[0].shape else None
        try:
            with open(path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(fh)
                if shape != (rows, classes) or dtype != np.float32:
                    raise OnnxFileError(f"{self.shown} gives {dtype} logits of shape {list(shape)} for {rows} images, "
                                        f"not float32 [{rows}, {classes}] as its graph declares")
                fh.seek(0)
                return np.load(fh, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise OnnxFileError(f"ONNX Runtime's output for {self.shown} is unreadable: {exc}") from None

    # --- the end ----------------------------------------------------------------------------------
    def close(self, kill: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if kill and proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.poll() is None:
                try:
                    proc.stdin.close()  # the child ends at the end of its input
                    proc.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    proc.kill()
                    proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass
        stderr = getattr(self, "_stderr", None)
        if stderr is not None and not stderr.closed:
            stderr.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "IsolatedSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
