"""Equation (1) of the paper, vectorised, plus its exact breakpoints.

For a layer l and QEM q >= 1 the chosen bit-width is the lowest b with QE(l, b) <= q * QE(l, 8).
Write T(l, b) = QE(l, b) / QE(l, 8) and, over bit-widths in ascending order, the running minimum
M(l, k) = min_{j <= k} T(l, b_j). Then "b(q) <= b_k" holds exactly when M(l, k) <= q, and since M
is non-increasing in k the chosen index is the number of k with M(l, k) > q: one searchsorted per
layer, for any number of QEMs at once. The plan only changes where q crosses some M(l, k), so
those values (the breakpoints) list every distinct plan, at most L*(B-1)+1 of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..errors import MixQuantError
from ..quant.qe import BASE_BITS, QETable


def check_qem(qem: float) -> float:
    try:
        value = float(qem)
    except (TypeError, ValueError):
        raise MixQuantError(f"QEM must be a number >= 1, got {qem!r}") from None
    if not np.isfinite(value) or value < 1:
        raise MixQuantError(f"QEM must be a finite number >= 1 (1 keeps every layer at 8 bits), got {qem!r}")
    return value


def _ratios_ascending(table: QETable):
    """Bits ascending, and the running-minimum ratio M [L, B] in that order."""
    order = np.argsort(table.bits)  # ascending bit-widths
    bits_up = np.asarray(table.bits)[order]
    qe_up = table.qe[:, order]
    base = table.column(BASE_BITS)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        # A layer whose 8-bit QE is 0 (all-zero or exactly representable) may only go lower where
        # that bit-width is also exact.
        ratio = np.where(base > 0, qe_up / np.where(base > 0, base, 1.0), np.where(qe_up <= 0, 0.0, np.inf))
    return bits_up, np.minimum.accumulate(ratio, axis=1)


def _check_qems(qems) -> np.ndarray:
    """``check_qem`` on every value, vectorised (breakpoints passes hundreds of them)."""
    try:
        values = np.atleast_1d(np.asarray(qems, dtype=np.float64))
    except (TypeError, ValueError):
        values = None
    if values is None or not (np.isfinite(values) & (values >= 1)).all():
        return np.array([check_qem(q) for q in np.atleast_1d(qems)], dtype=np.float64)  # raises on the bad one
    return values


def search_many(table: QETable, qems: Sequence[float], pinned: Optional[Sequence[bool]] = None) -> np.ndarray:
    """Bit-widths [Q, L] for every QEM in ``qems`` (pinned layers stay at 8 bits)."""
    qems = _check_qems(qems)
    bits_up, running_min = _ratios_ascending(table)
    ascending = bool(np.all(qems[1:] >= qems[:-1]))  # breakpoints() passes them sorted
    order = None if ascending else np.argsort(qems, kind="stable")
    # p(l, k) = number of (sorted) QEMs below M(l, k), so M(l, k) > q_i exactly for i < p(l, k),
    # and the chosen index at q_i is the count of k with p(l, k) > i. M is non-increasing in k,
    # so p is too: read backwards, a layer's p splits 0..Q into B+1 runs on which that count is
    # B, B-1, ..., 0. One np.repeat writes every layer's runs: O(Q*L) output, O(L*B) work besides.
    p = np.searchsorted(qems if ascending else qems[order], running_min, side="left")  # [L, B] in 0..Q
    (n_l, n_b), n_q = running_min.shape, len(qems)
    edges = np.concatenate([np.zeros((n_l, 1), p.dtype), p[:, ::-1], np.full((n_l, 1), n_q, p.dtype)], axis=1)
    counts = np.arange(n_b, -1, -1)  # run r holds count B - r
    values = bits_up[np.minimum(counts, n_b - 1)]  # count B never occurs: p(l, B-1) = 0, its run is empty
    out = np.repeat(np.broadcast_to(values, (n_l, n_b + 1)).ravel(), np.diff(edges, axis=1).ravel())
    out = out.reshape(n_l, n_q).T  # [Q, L], a transposed view: rows are read one plan at a time
    if order is not None:
        out = out[np.argsort(order, kind="stable")]
    if pinned is not None and any(pinned):
        out = np.array(out)
        out[:, np.asarray(pinned, dtype=bool)] = BASE_BITS
    return out


def search(table: QETable, qem: float, pinned: Optional[Sequence[bool]] = None) -> np.ndarray:
    """Bit-width per layer [L] for one QEM (equation 1)."""
    return search_many(table, [qem], pinned)[0]


@dataclass
class PlanFamily:
    """Every distinct plan of the QEM rule: ``bits[i]`` holds for QEM in [qems[i], qems[i+1])."""

    qems: np.ndarray  # [P] ascending, qems[0] == 1
    bits: np.ndarray  # [P, L]

    def __len__(self) -> int:
        return len(self.qems)

    def index_for(self, qem: float) -> int:
        return int(np.searchsorted(self.qems, check_qem(qem), side="right") - 1)


def breakpoints(table: QETable, pinned: Optional[Sequence[bool]] = None) -> PlanFamily:
    """The exact QEMs at which some layer's bit-width changes, with the plan on each interval."""
    _, running_min = _ratios_ascending(table)
    mask = np.ones(len(table.layers), dtype=bool)
    if pinned is not None:
        mask &= ~np.asarray(pinned, dtype=bool)
    cands = running_min[mask].ravel()
    cands = np.unique(cands[np.isfinite(cands) & (cands > 1.0)])
    qems = np.concatenate([[1.0], cands])
    # Every candidate changes the plan: at q = M(l, k) > 1 layer l (not pinned) counts one more
    # k with M(l, k) <= q than just below it, and distinct counts are distinct bit-widths. Values
    # equal as floats but reached by different layers were merged by np.unique.
    return PlanFamily(qems=qems, bits=search_many(table, qems, pinned))


def default_qem_grid(table: QETable, steps: int = 12, qem_min: float = 1.0, qem_max: Optional[float] = None) -> np.ndarray:
    """Log-spaced QEMs from ``qem_min`` to where the last layer reaches its lowest bit-width."""
    check_qem(qem_min)
    if qem_max is None:
        fam = breakpoints(table)
        qem_max = max(float(fam.qems[-1]) * 1.05, qem_min * 2)
    check_qem(qem_max)
    if qem_max < qem_min:
        raise MixQuantError(f"--qem-max ({qem_max}) must not be below --qem-min ({qem_min})")
    return np.unique(np.geomspace(qem_min, qem_max, max(int(steps), 1)))
