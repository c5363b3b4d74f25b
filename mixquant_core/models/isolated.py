"""Loading a model file in a child process with a time and a memory limit.

A file that hangs or allocates without end costs that child, never the caller (the app server,
its other sessions). The child (``python -m mixquant_core.models.registry``, which calls
``child_main``) loads the file and hands back tensors only: a ``torch.save`` of the state dict,
read here with ``weights_only=True``. The caller (registry.load_file) then rebuilds
the model without running the file's code where it can: a state dict goes into the registry
architecture; trusted code (TorchScript, a pickled module) with ``--arch`` whose state fits that
architecture is rebuilt from it too. Trusted code without a fitting architecture must be loaded
in this process as well (its module *is* the model): the child was the probe that showed it ends
within the limits, the second load runs the same trusted code again.

Settings (environment): MIXQUANT_LOAD_TIMEOUT_S (default 300 s), MIXQUANT_LOAD_MEMORY_MB (address
space the child may add after start-up, default 16384 MB). ONNX files run by ONNX Runtime get the
same limits (export/onnx_isolated.py); the child's side of them is models/child_limits.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

from ..errors import MixQuantError, ModelUnavailableError, UntrustedCodeError, first_line
from ..numbers import env_number
from .child_limits import EXIT_MEMORY, EXIT_UNTRUSTED, EXIT_USER, die_with_parent, limit_memory, tail

TIMEOUT_ENV = "MIXQUANT_LOAD_TIMEOUT_S"
MEMORY_ENV = "MIXQUANT_LOAD_MEMORY_MB"
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_MEMORY_MB = 16384


def limit_setting(name: str, default: float) -> float:
    """The limit from the environment, bounded as every number a user gives (mixquant_core.numbers)."""
    try:
        return float(env_number(name, default))
    except MixQuantError as exc:
        raise ModelUnavailableError(str(exc)) from None


def run_child(module: str, args: List[str], shown: str) -> Tuple[dict, Dict[str, torch.Tensor]]:
    """Run ``python -m module args... OUT MEMORY_MB`` (a ``child_main``) under the limits; returns
    its JSON line and the tensors it saved to OUT, or raises one line naming ``shown``."""
    timeout = limit_setting(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    memory_mb = limit_setting(MEMORY_ENV, DEFAULT_MEMORY_MB)
    with tempfile.TemporaryDirectory(prefix="mixquant-load-") as tmp:
        out = Path(tmp) / "state.pt"
        # The child sees this process's import path, so it reads the file with the same code
        # (and a trusted pickle finds the same classes).
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        cmd = [sys.executable, "-m", module, *args, str(out), str(int(memory_mb))]
        # Output goes to files, read back from their ends: a file's code printing without end
        # fills the disk of a temporary folder, not this process's memory.
        with open(Path(tmp) / "stdout", "w+b") as fout, open(Path(tmp) / "stderr", "w+b") as ferr:
            try:
                done = subprocess.run(cmd, env=env, stdout=fout, stderr=ferr, timeout=timeout, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:  # run() has killed the child
                raise ModelUnavailableError(f"loading '{shown}' took longer than {timeout:g} s and was stopped "
                                            f"(time limit, {TIMEOUT_ENV})") from None
            stdout, stderr = tail(fout), tail(ferr)
        message = (stderr.strip().splitlines() or [""])[-1][:300]
        if done.returncode == EXIT_UNTRUSTED:
            raise UntrustedCodeError(message)
        if done.returncode == EXIT_USER:
            raise ModelUnavailableError(message)
        if done.returncode == EXIT_MEMORY:
            raise ModelUnavailableError(f"loading '{shown}' needed more than {memory_mb:g} MB and was stopped "
                                        f"(memory limit, {MEMORY_ENV})")
        if done.returncode < 0:
            raise ModelUnavailableError(f"loading '{shown}' crashed its child process (signal {-done.returncode}; "
                                        f"out of memory? limit {MEMORY_ENV}={memory_mb:g} MB)")
        if done.returncode != 0:
            raise ModelUnavailableError(f"loading '{shown}' failed in its child process: {message or done.returncode}")
        try:
            info = json.loads(stdout.strip().splitlines()[-1])
            state = torch.load(out, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelUnavailableError(f"'{shown}': the child process returned unreadable tensors: {first_line(exc)}") from None
    return info, state


def child_main(load: Callable[..., Tuple[dict, Dict[str, torch.Tensor]]]) -> int:
    """The child's side: ``load(*args, shown)`` under the memory limit, tensors saved for the parent."""
    *args, out, memory_mb = sys.argv[1:]
    die_with_parent()
    limit_memory(int(memory_mb))
    try:
        info, state = load(*args)
        torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, out)
    except UntrustedCodeError as exc:
        print(exc, file=sys.stderr)
        return EXIT_UNTRUSTED
    except ModelUnavailableError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USER
    except MemoryError:
        return EXIT_MEMORY
    except Exception as exc:  # the file's own code failed: one line back to the parent
        if "allocate memory" in str(exc):  # torch's allocator hit the limit
            return EXIT_MEMORY
        print(f"'{args[-1]}' does not load: {type(exc).__name__}: {first_line(exc)}", file=sys.stderr)
        return EXIT_USER
    print(json.dumps(info))
    return 0
