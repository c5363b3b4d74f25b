"""Output files: checked before the work starts, written atomically (beside, fsync, rename).

Stage 0 like errors.py: every stage that writes may use it. A failed write (full disk, no
permission, a pseudo file system) leaves the old file as it was and raises one line.
"""
from __future__ import annotations

import errno
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Tuple, Type, Union

from .errors import MixQuantError, first_line

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
        raise OutputError(f"cannot write '{path}': {why_not_written(exc)}; {_old_file_state(out)}") from None
    except BaseException:
        _remove(tmp)
        raise


def atomic_write(path: PathLike, data: Union[str, bytes]) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


def atomic_save(path: PathLike, save: Callable[[str], None],
                library_errors: Tuple[Type[BaseException], ...] = ()) -> None:
    """Write ``path`` atomically with a library function that writes to a path it is given
    (safetensors' ``save_file``): ``save`` writes a temporary file beside ``path``. Libraries do not
    raise OSError for a full disk (safetensors raises SafetensorError "... (os error 28)"), so
    ``library_errors`` are turned into the same one line as any other failed write."""
    with atomic_path(path) as tmp:
        try:
            save(tmp)
        except library_errors as exc:
            code = _errno_named_in(exc)
            if code is None:  # not the disk: say what the library said, still in one line
                raise OutputError(f"cannot write '{path}': {first_line(exc)}; {_old_file_state(Path(path))}") from None
            raise OSError(code, os.strerror(code)) from None


# How Rust's std::io::Error shows an errno ("I/O error: No space left on device (os error 28)").
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _errno_named_in(exc: BaseException) -> Optional[int]:
    found = _RUST_OS_ERROR.search(str(exc))
    return int(found.group(1)) if found else None


def why_not_written(exc: OSError) -> str:
    """The reason a write failed, in words; a file-size limit says so (its strerror, "File too
    large", reads like a fault of the file)."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno == errno.EFBIG:
        reason += " (a file-size limit was reached)"
    return reason


def _old_file_state(path: Path) -> str:
    return "the old file is unchanged" if path.exists() else "nothing was written"


def _remove(tmp: str) -> None:
    try:
        os.remove(tmp)
    except OSError:
        pass


def file_digest(path: PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's content, read in chunks (results of a file are keyed by what it holds)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
