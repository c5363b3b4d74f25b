"""Progress on stderr, in the form that suits where stderr goes. A terminal (or ``--progress``) gets
a tqdm bar; a file or a pipe gets one plain line per finished stage, since a bar there is thousands
of ``\\r`` updates in the log; ``--no-progress`` gets nothing. Commands pass the mode to
``progress``, which hands the core its ``(done, total, what)`` callback (None when off)."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Optional

BAR, LINES, OFF = "bar", "lines", "off"


def progress_mode(no_progress: bool, force: bool, terminal: bool) -> str:
    """BAR, LINES or OFF from ``--no-progress``, ``--progress`` and whether stderr is a terminal."""
    if no_progress:
        return OFF
    return BAR if force or terminal else LINES


def is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or already closed
        return False


def mode_of(args) -> str:
    """The progress mode the command line asks for, given this process's stderr."""
    return progress_mode(getattr(args, "no_progress", False), getattr(args, "progress", False),
                         is_terminal(sys.stderr))


def stage_line(stage: str, seconds: float, done: Optional[int] = None, unit: str = "") -> str:
    """``mixquant: sweep: 12 plans done in 40.1 s`` (the count only when the stage reported one)."""
    count = f"{done} {unit} " if done is not None and unit else ""
    return f"mixquant: {stage}: {count}done in {seconds:.1f} s"


def sweep_unit(cluster) -> str:
    """What a sweep's progress counts: plans here, (plan, image shard) tasks on a cluster."""
    return "plans" if cluster is None else "tasks"


@contextmanager
def progress(mode: str, stage: str, unit: str = ""):
    """The core's progress callback for one stage, shown as ``mode`` says; ``unit`` names what the
    stage counts (images, layers, plans) in its plain line."""
    if mode == BAR:
        with _bar(stage) as update:
            yield update
    elif mode == LINES:
        with _line(stage, unit) as update:
            yield update
    else:
        yield None


@contextmanager
def _bar(stage: str):
    from tqdm import tqdm

    bar = tqdm(total=0, desc=stage, file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(done: int, total: int, what: str) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.set_postfix_str(what[-40:], refresh=False)
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


@contextmanager
def _line(stage: str, unit: str):
    start = time.perf_counter()
    last = {}

    def update(done: int, total: int, what: str) -> None:
        last["done"] = done

    yield update
    # only a stage that finished says "done"; an error ends the command with its own line
    print(stage_line(stage, time.perf_counter() - start, last.get("done"), unit), file=sys.stderr, flush=True)
