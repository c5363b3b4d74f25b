"""Reading a sweep (Evaluations.sweep rows): a method's baseline row, the rows as CSV. The plan under an
accuracy budget is studies/target.py's smallest_within_drop (a bisection, not a read of a sweep)."""
from __future__ import annotations

import csv
import io
from typing import Optional, Sequence

from ..evaluations import PLAN_ROW_COLUMNS, PlanRow


def baseline(rows: Sequence[PlanRow], method: str) -> Optional[PlanRow]:
    return next((r for r in rows if r.method == method), None)


def rows_to_csv(rows: Sequence[PlanRow]) -> str:
    """The sweep (or comparison) as CSV, the same columns as ``mixquant sweep --out``."""
    buf = io.StringIO()
    columns = list(rows[0].to_flat_dict()) if rows else PLAN_ROW_COLUMNS
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(r.to_flat_dict() for r in rows)
    return buf.getvalue()
