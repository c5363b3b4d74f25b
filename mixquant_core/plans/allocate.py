"""Budgeted bit allocation: the per-layer bit-widths of least summed cost under a size budget.

Each layer l offers points (weight w(l, b), cost c(l, b)), one per candidate bit-width, where the
weight is what the budget counts (bytes of the quantized layer, or params * b for an average-bit
budget) and the cost is what quantizing the layer at b does (plain QE or Fisher-weighted error).
For a multiplier lam >= 0 the Lagrangian  sum_l c(l, b_l) + lam * w(l, b_l)  separates per layer,
and its minimiser always lies on the lower convex hull of that layer's points. Walking a layer's
hull from its lightest point upwards is a list of upgrade steps of falling efficiency
-dc/dw; taking every layer's steps in one global order of efficiency visits exactly the plans
that minimise the Lagrangian for some lam, from lam = inf (every layer at its lightest point) down
to lam = 0 (every layer at its cheapest point). Every such plan is optimal for its own size: no
plan of equal or lower weight has a lower total cost (if B(y) <= B(x) then
C(y) >= C(x) + lam (B(x) - B(y)) >= C(x)). Sorting L * B steps gives the family in O(L B log(L B)).

Budgets that fall between two plans of the family are met by the heavier-cost, lighter plan; an
optional greedy fill then spends what is left on the best single-layer upgrades that still fit
(not guaranteed optimal there, but never worse and never over budget).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import MixQuantError

PINNED_BITS = 8


def lower_hull(weights: Sequence[float], costs: Sequence[float]) -> List[int]:
    """Indices of the points on the lower-left convex hull, lightest first, ending at the lightest
    point of least cost: the only points that minimise cost + lam * weight for some lam >= 0."""
    w = np.asarray(weights, dtype=np.float64)
    c = np.asarray(costs, dtype=np.float64)
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(c))):
        raise MixQuantError("allocation needs finite costs and weights (a layer's cost is NaN or Inf)")
    # lightest first; among equal weights only the cheapest can be on the hull
    order = np.lexsort((c, w))
    hull: List[int] = []
    for i in order:
        if hull and w[hull[-1]] == w[i]:
            continue  # same weight, not cheaper (lexsort put the cheapest first)
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b when it lies above the segment a -> i; points on it stay (finer family)
            if (w[b] - w[a]) * (c[i] - c[a]) - (c[b] - c[a]) * (w[i] - w[a]) < 0:
                hull.pop()
            else:
                break
        hull.append(int(i))
    # keep the falling part: points past the cheapest one never win for lam >= 0
    best = int(np.argmin(c[hull]))  # first (lightest) of equal minima
    return hull[: best + 1]


@dataclass
class AllocationFamily:
    """Every Lagrangian-optimal plan, heaviest (least cost) first.

    ``bits[k]`` is a plan [L]; ``weight[k]`` and ``cost[k]`` its totals; ``lam[k]`` a multiplier
    for which it minimises cost + lam * weight (0 for the first, inf for the last).
    """

    bits: np.ndarray  # [P, L] int
    weight: np.ndarray  # [P]
    cost: np.ndarray  # [P]
    lam: np.ndarray  # [P]

    def __len__(self) -> int:
        return len(self.weight)

    def index_within(self, budget: float) -> int:
        """The least-cost plan of the family whose weight is <= budget (weights fall with k)."""
        fits = np.nonzero(self.weight <= budget * (1 + 1e-12) + 1e-9)[0]
        if not len(fits):
            raise MixQuantError(f"no plan fits that budget: the smallest possible is {self.weight[-1]:.6g}, "
                                f"asked for {budget:.6g}")
        return int(fits[0])


def _check_tables(bit_widths: Sequence[int], weights: np.ndarray, costs: np.ndarray, pinned) -> Tuple:
    bit_widths = np.asarray([int(b) for b in bit_widths])
    weights = np.asarray(weights, dtype=np.float64)
    costs = np.asarray(costs, dtype=np.float64)
    if weights.shape != costs.shape or weights.ndim != 2 or weights.shape[1] != len(bit_widths):
        raise ValueError(f"weights {weights.shape} and costs {costs.shape} must both be [layers, {len(bit_widths)}]")
    pinned = np.zeros(len(weights), dtype=bool) if pinned is None else np.asarray(pinned, dtype=bool)
    if pinned.any() and PINNED_BITS not in bit_widths:
        raise MixQuantError(f"pinned layers stay at {PINNED_BITS} bits, which must be a candidate bit-width")
    return bit_widths, weights, costs, pinned


def allocation_family(bit_widths: Sequence[int], weights: np.ndarray, costs: np.ndarray,
                      pinned: Optional[Sequence[bool]] = None) -> AllocationFamily:
    """The whole family of Lagrangian-optimal plans (see the module docstring).

    ``weights`` and ``costs`` are [L, B] with column j for ``bit_widths[j]``; pinned layers stay at
    8 bits (their weight counts in every plan's total, their cost does not change).
    """
    bit_widths, weights, costs, pinned = _check_tables(bit_widths, weights, costs, pinned)
    n_layers = len(weights)
    start = np.empty(n_layers, dtype=np.int64)  # column index per layer, lightest hull point
    steps = []  # (efficiency, layer, order within layer, to_column)
    for l in range(n_layers):
        if pinned[l]:
            start[l] = int(np.nonzero(bit_widths == PINNED_BITS)[0][0])
            continue
        hull = lower_hull(weights[l], costs[l])
        start[l] = hull[0]
        for k in range(1, len(hull)):
            a, b = hull[k - 1], hull[k]
            eff = (costs[l, a] - costs[l, b]) / (weights[l, b] - weights[l, a])
            steps.append((eff, l, k, b))
    # Highest efficiency first; ties keep each layer's own hull order (k) so plans stay on hulls.
    steps.sort(key=lambda s: (-s[0], s[1], s[2]))
    cols = start.copy()
    rows = np.arange(n_layers)
    plans = [cols.copy()]
    lams = [np.inf]
    for eff, l, _, to in steps:
        cols[l] = to
        plans.append(cols.copy())
        lams.append(eff)
    plans.reverse()
    lams.reverse()
    lams[0] = 0.0
    col_idx = np.array(plans)
    weight = weights[rows, col_idx].sum(axis=1)
    cost = costs[rows, col_idx].sum(axis=1)
    return AllocationFamily(bits=bit_widths[col_idx], weight=weight, cost=cost, lam=np.array(lams))


def fill(bits: Sequence[int], bit_widths: Sequence[int], weights: np.ndarray, costs: np.ndarray, budget: float,
         pinned: Optional[Sequence[bool]] = None) -> np.ndarray:
    """Greedily spend what the budget leaves: repeatedly take the single-layer change with the best
    cost saved per weight added that still fits, until none lowers the cost."""
    bit_widths, weights, costs, pinned = _check_tables(bit_widths, weights, costs, pinned)
    col_of = {int(b): j for j, b in enumerate(bit_widths)}
    cols = np.array([col_of[int(b)] for b in bits])
    rows = np.arange(len(cols))
    left = budget - weights[rows, cols].sum()
    free = ~pinned
    while True:
        dc = costs[rows, cols][:, None] - costs  # cost saved by moving to column j
        dw = weights - weights[rows, cols][:, None]  # weight added
        ok = free[:, None] & (dc > 0) & (dw <= left + 1e-9)
        if not ok.any():
            return bit_widths[cols]
        gain = np.where(ok, dc / np.maximum(dw, 1e-300), -np.inf)
        gain[ok & (dw <= 0)] = np.inf  # cheaper and no heavier: always take
        l, j = np.unravel_index(int(np.argmax(gain)), gain.shape)
        left -= dw[l, j]
        cols[l] = j


def allocate(bit_widths: Sequence[int], weights: np.ndarray, costs: np.ndarray, budget: float,
             pinned: Optional[Sequence[bool]] = None, family: Optional[AllocationFamily] = None,
             greedy_fill: bool = True) -> np.ndarray:
    """Bit-widths [L] of least summed cost whose total weight is <= ``budget``: the best plan of the
    Lagrangian family within the budget, then (by default) the greedy fill."""
    family = family or allocation_family(bit_widths, weights, costs, pinned)
    bits = family.bits[family.index_within(budget)]
    return fill(bits, bit_widths, weights, costs, budget, pinned) if greedy_fill else bits.copy()
