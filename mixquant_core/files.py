"""Output files: checked before the work starts, written atomically (beside, fsync, rename).

Stage 0 like errors.py: every stage that writes may use it. A failed write (full disk, no
permission, a pseudo file system) leaves the old file as it was and raises one line.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

from .errors import MixQuantError

PathLike = Union[str, os.PathLike]


class OutputError(MixQuantError):
    """An output path that cannot be written (a folder, not writable, equal to an input)."""


def check_output(path: PathLike, inputs: Iterable[Optional[PathLike]] = (), what: str = "--out") -> Path:
    """Refuse an output path before any work: a folder, a missing or unwritable folder, a
    non-regular file, or one of the command's own inputs. Probes the folder with a real file."""
    out = Path(path)
    shown = f"{what} '{path}'"
    if str(path).strip() == "":
        raise OutputError(f"{what} is empty")
    if out.is_dir():
        raise OutputError(f"{shown} is a folder; give a file name")
    if out.exists() and not out.is_file():
        raise OutputError(f"{shown} exists and is not a regular file")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{shown}: folder '{folder}' does not exist")
    for given in inputs:
        if given and _same_file(out, Path(given)):
            raise OutputError(f"{shown} is also an input of this command ('{given}'); write to another file")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{out.name[:40]}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise OutputError(f"{shown} cannot be written: {exc.strerror or type(exc).__name__}") from None
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


@contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """A temporary path beside ``path`` to write to; on success it is fsynced and renamed over
    ``path``; on failure it is removed and ``path`` is untouched."""
    out = Path(path)
    fd, tmp = tempfile.mkstemp(dir=out.parent if str(out.parent) else ".", prefix=f".{out.name[:40]}.", suffix=".part")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the result from the user's other tools
        os.replace(tmp, out)
    except OSError as exc:
        _remove(tmp)
        raise OutputError(f"cannot write '{path}': {exc.strerror or type(exc).__name__}; the old file is unchanged") from None
    except BaseException:
        _remove(tmp)
        raise


def atomic_write(path: PathLike, data: Union[str, bytes]) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


def _remove(tmp: str) -> None:
    try:
        os.remove(tmp)
    except OSError:
        pass
