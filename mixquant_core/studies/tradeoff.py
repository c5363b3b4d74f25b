"""Reading a sweep (Workspace.sweep rows): pick a plan under an accuracy budget, write a CSV."""
from __future__ import annotations

import csv
import io
from typing import Optional, Sequence

from ..errors import MixQuantError
from ..workspace import SWEEP_COLUMNS, SweepRow


def baseline(rows: Sequence[SweepRow], method: str) -> Optional[SweepRow]:
    return next((r for r in rows if r.method == method), None)


def smallest_within(rows: Sequence[SweepRow], max_drop: float) -> Optional[SweepRow]:
    """The smallest MixQuant plan whose top-1 is at most ``max_drop`` points below float32's.

    Ties in size go to the higher top-1. None when no evaluated plan is that accurate.
    """
    if max_drop < 0:
        raise MixQuantError(f"the allowed top-1 drop must be >= 0 points, got {max_drop}")
    ref = baseline(rows, "float32")
    if ref is None:
        raise MixQuantError("the sweep has no float32 row to compare against")
    fits = [r for r in rows if r.method == "mixquant" and r.top1 >= ref.top1 - max_drop - 1e-9]
    if not fits:
        return None
    return min(fits, key=lambda r: (r.size_mb, -r.top1))


def rows_to_csv(rows: Sequence[SweepRow]) -> str:
    """The sweep (or comparison) as CSV, the same columns as ``mixquant sweep --out``."""
    buf = io.StringIO()
    columns = list(rows[0].to_flat_dict()) if rows else SWEEP_COLUMNS
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(r.to_flat_dict() for r in rows)
    return buf.getvalue()
