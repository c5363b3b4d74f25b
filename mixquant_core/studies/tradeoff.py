"""Reading a sweep (Evaluations.sweep rows): pick a plan under an accuracy budget, write a CSV."""
from __future__ import annotations

import csv
import io
from typing import Optional, Sequence

from ..errors import MixQuantError
from ..evaluations import PLAN_ROW_COLUMNS, PlanRow


def baseline(rows: Sequence[PlanRow], method: str) -> Optional[PlanRow]:
    return next((r for r in rows if r.method == method), None)


def smallest_within(rows: Sequence[PlanRow], max_drop: float) -> Optional[PlanRow]:
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


def rows_to_csv(rows: Sequence[PlanRow]) -> str:
    """The sweep (or comparison) as CSV, the same columns as ``mixquant sweep --out``."""
    buf = io.StringIO()
    columns = list(rows[0].to_flat_dict()) if rows else PLAN_ROW_COLUMNS
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(r.to_flat_dict() for r in rows)
    return buf.getvalue()
