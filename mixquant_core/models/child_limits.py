"""The limits a child process puts on itself before it touches an untrusted file.

Standard library only, and importable by path: the ONNX runner (export/onnx_runner.py) loads this
file without importing the ``mixquant_core`` package, whose ``__init__`` imports torch and every
stage (seconds per child). isolated.py (model files) and the ONNX runner share these.
"""
from __future__ import annotations

import os

# Exit codes a limited child uses to tell its parent why it stopped.
EXIT_USER, EXIT_UNTRUSTED, EXIT_MEMORY = 2, 3, 4


def limit_memory(extra_mb: int) -> None:
    """Cap this process's address space at its current size plus ``extra_mb`` (RLIMIT_AS)."""
    import resource

    vm = 0
    try:
        with open("/proc/self/status") as fh:
            vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        pass
    limit = vm + extra_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def die_with_parent() -> None:
    """Linux: the kernel kills this child when its parent ends (a killed CLI or server leaves no
    orphan looping on; the time limit itself is enforced by the parent)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def tail(fh, size: int = 65536) -> str:
    """The last ``size`` bytes of an open binary file, as text (a child's stderr, read back)."""
    fh.seek(0, os.SEEK_END)
    fh.seek(max(0, fh.tell() - size))
    return fh.read().decode("utf-8", "replace")
