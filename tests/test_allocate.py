"""Budgeted allocation (Lagrangian sweep over per-layer lower convex hulls) against brute force."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixquant_core.plans.allocate import allocate, allocation_family, fill, lower_hull
from mixquant_core.errors import MixQuantError


@st.composite
def cost_tables(draw, max_layers=4):
    """Random small problems: bit-widths, per-layer weights growing with bits, arbitrary costs
    (typical ones fall with bits, but nothing in the method may rely on it), a pinned mask."""
    bit_widths = sorted(draw(st.sets(st.integers(2, 7), min_size=1, max_size=3)) | {8}, reverse=True)
    n_layers = draw(st.integers(1, max_layers))
    params = draw(st.lists(st.integers(1, 50), min_size=n_layers, max_size=n_layers))
    overhead = draw(st.integers(0, 5))
    weights = np.array([[p * b + overhead for b in bit_widths] for p in params], dtype=np.float64)
    cost = st.one_of(st.floats(0, 100, allow_nan=False), st.sampled_from([0.0, 1.0, 10.0]))  # ties matter
    costs = np.array(draw(st.lists(st.lists(cost, min_size=len(bit_widths), max_size=len(bit_widths)),
                                   min_size=n_layers, max_size=n_layers)))
    pinned = draw(st.lists(st.booleans(), min_size=n_layers, max_size=n_layers))
    return bit_widths, weights, costs, pinned


def all_plans(bit_widths, weights, costs, pinned):
    """Every plan (pinned layers at 8) with its total weight and cost."""
    rows = np.arange(len(weights))
    choices = [[bit_widths.index(8)] if p else range(len(bit_widths)) for p in pinned]
    for cols in itertools.product(*choices):
        cols = np.array(cols)
        yield cols, weights[rows, cols].sum(), costs[rows, cols].sum()


def totals(bits, bit_widths, weights, costs):
    rows = np.arange(len(weights))
    cols = np.array([bit_widths.index(int(b)) for b in bits])
    return weights[rows, cols].sum(), costs[rows, cols].sum()


@settings(max_examples=100, deadline=None)
@given(cost_tables())
def test_every_plan_of_the_family_is_optimal_for_its_own_size(problem):
    bit_widths, weights, costs, pinned = problem
    family = allocation_family(bit_widths, weights, costs, pinned)
    brute = list(all_plans(bit_widths, weights, costs, pinned))
    for bits, weight, cost in zip(family.bits, family.weight, family.cost):
        assert np.isclose((weight, cost), totals(bits, bit_widths, weights, costs)).all()
        best = min(c for _, w, c in brute if w <= weight + 1e-9)
        assert cost <= best + 1e-9 * max(1.0, abs(best))
        assert all(b == 8 for b, p in zip(bits, pinned) if p)
    # heaviest first, strictly lighter each step; ends at the lightest possible plan
    assert np.all(np.diff(family.weight) < 0)
    assert np.isclose(family.weight[-1], min(w for _, w, _ in brute))
    # the first plan has the least total cost of all
    assert np.isclose(family.cost[0], min(c for _, _, c in brute))


@settings(max_examples=100, deadline=None)
@given(cost_tables(), st.floats(0, 1))
def test_allocate_respects_every_budget_and_never_loses_to_the_family(problem, where):
    bit_widths, weights, costs, pinned = problem
    family = allocation_family(bit_widths, weights, costs, pinned)
    low, high = family.weight[-1], weights.max(axis=1).sum() * 1.1
    budget = low + where * (high - low)
    bits = allocate(bit_widths, weights, costs, budget, pinned)
    weight, cost = totals(bits, bit_widths, weights, costs)
    assert weight <= budget + 1e-9
    assert all(b == 8 for b, p in zip(bits, pinned) if p)
    plain = allocate(bit_widths, weights, costs, budget, pinned, greedy_fill=False)
    plain_weight, plain_cost = totals(plain, bit_widths, weights, costs)
    assert plain_weight <= budget + 1e-9 and cost <= plain_cost + 1e-9
    # without the fill it is the least-cost plan of the family within the budget
    fits = [c for w, c in zip(family.weight, family.cost) if w <= budget + 1e-9]
    assert np.isclose(plain_cost, min(fits))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.floats(0, 50, allow_nan=False)), min_size=1, max_size=7))
def test_hull_holds_exactly_the_points_that_win_for_some_multiplier(points):
    w = np.array([p[0] for p in points], dtype=np.float64)
    c = np.array([p[1] for p in points], dtype=np.float64)
    hull = lower_hull(w, c)
    assert list(w[hull]) == sorted(set(w[hull]))  # lightest first, strictly heavier
    assert np.all(np.diff(c[hull]) < 0)  # strictly cheaper each step
    # every minimiser of c + lam w (lightest one on ties) is on the hull, for a dense set of lam
    for lam in np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 30)]):
        score = c + lam * w
        best = np.nonzero(np.isclose(score, score.min(), rtol=0, atol=1e-9))[0]
        lightest = best[np.argmin(w[best])]
        assert any(w[h] == w[lightest] and np.isclose(c[h], c[lightest]) for h in hull)


def test_a_layer_with_zero_cost_everywhere_goes_to_its_fewest_bits():
    bit_widths = [8, 4, 2]
    weights = np.array([[8.0, 4.0, 2.0], [80.0, 40.0, 20.0]])
    costs = np.array([[0.0, 0.0, 0.0], [1.0, 10.0, 100.0]])
    family = allocation_family(bit_widths, weights, costs)
    assert family.bits[0].tolist() == [2, 8] and family.bits[-1].tolist() == [2, 2]


def test_fill_spends_leftover_budget_on_the_best_upgrade():
    bit_widths = [8, 4, 2]
    weights = np.array([[8.0, 4.0, 2.0], [8.0, 4.0, 2.0]])
    costs = np.array([[0.0, 1.0, 9.0], [0.0, 3.0, 5.0]])
    # at budget 8 both (4, 4) and (8, 2)/(2, 8) fit; (4, 4) costs 4, the others 5 and 9
    assert fill([2, 2], bit_widths, weights, costs, 8.0).tolist() == [4, 4]


def test_budget_below_the_smallest_plan_is_a_clear_error():
    weights = np.array([[8.0, 2.0]])
    with pytest.raises(MixQuantError, match="no plan fits"):
        allocate([8, 2], weights, np.array([[0.0, 1.0]]), 1.0)


def test_nan_cost_is_refused():
    with pytest.raises(MixQuantError, match="NaN"):
        allocation_family([8, 2], np.array([[8.0, 2.0]]), np.array([[0.0, np.nan]]))
