"""Intervals, paired comparisons and the early-stop rule (evaluation/statistics.py) on known cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from mixquant_core.data.image_sets import EvalTensors
from mixquant_core.evaluation.evaluate import Metrics, evaluate
from mixquant_core.evaluation.statistics import EarlyStop, paired_difference, wilson_interval


def paired(both: int, only_first: int, only_second: int, neither: int):
    first = np.array([1] * both + [1] * only_first + [0] * only_second + [0] * neither, dtype=bool)
    second = np.array([1] * both + [0] * only_first + [1] * only_second + [0] * neither, dtype=bool)
    return first, second


def test_wilson_matches_statsmodels_and_known_value():
    # 81 of 100: the "about +-8 points" at 100 images
    lo, hi = wilson_interval(81, 100)
    assert (lo, hi) == pytest.approx([100 * v for v in proportion_confint(81, 100, method="wilson")])
    assert lo == pytest.approx(72.22, abs=0.01) and hi == pytest.approx(87.49, abs=0.01)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(100.0)


def test_paired_interval_published_value():
    # Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables, ch. 8 (Newcombe
    # square-and-add, paired): table [[59, 6], [16, 80]] -> -0.0621 (95 % CI -0.1186 to -0.0046)
    first, second = paired(59, 6, 16, 80)
    d = paired_difference(first, second)
    assert d.delta == pytest.approx(-6.21, abs=0.01)
    assert d.ci[0] == pytest.approx(-11.86, abs=0.01) and d.ci[1] == pytest.approx(-0.46, abs=0.01)
    # McNemar exact = two-sided binomial test on the 22 discordant pairs (6 vs 16)
    from scipy.stats import binomtest

    assert d.p_value == pytest.approx(binomtest(6, 22, 0.5).pvalue)
    assert not d.within_noise


def test_paired_equals_independent_newcombe_when_uncorrelated():
    # with no correlation between the pairs (phi = 0 after the correction), the paired interval is
    # Newcombe's independent-samples hybrid score interval, as statsmodels computes it
    first, second = paired(10, 10, 10, 10)  # ad - bc = 0
    d = paired_difference(first, second)
    lo, hi = confint_proportions_2indep(20, 40, 20, 40, method="newcomb", compare="diff")
    assert d.ci == pytest.approx((100 * lo, 100 * hi))


def test_plan_equal_to_float32_gives_zero_and_p_one():
    hits = np.random.default_rng(0).random(300) < 0.8
    d = paired_difference(hits, hits)
    assert d.delta == 0.0 and d.p_value == 1.0 and d.within_noise
    assert d.ci[0] < 0 < d.ci[1]


@given(st.integers(0, 40), st.integers(0, 15), st.integers(0, 15), st.integers(0, 40))
def test_paired_interval_holds_the_estimate(a, b, c, d):
    if a + b + c + d == 0:
        return
    first, second = paired(a, b, c, d)
    diff = paired_difference(first, second)
    assert -100.0 <= diff.ci[0] <= diff.delta <= diff.ci[1] <= 100.0
    assert 0.0 <= diff.p_value <= 1.0
    mirrored = paired_difference(second, first)  # swapping the sides mirrors everything
    assert mirrored.ci == pytest.approx((-diff.ci[1], -diff.ci[0]))
    assert mirrored.p_value == pytest.approx(diff.p_value)


def test_metrics_summary_has_intervals_and_vs_float32():
    ref = Metrics.from_per_image([1, 1, 0, 1] * 25, [1] * 100, [0.5] * 100)
    plan = Metrics.from_per_image([1, 0, 0, 1] * 25, [1] * 100, [0.7] * 100)
    out = plan.summary(ref)
    assert out["top1_ci"] == pytest.approx(list(wilson_interval(50, 100)))
    assert out["vs_float32"]["delta_top1"] == pytest.approx(-25.0)
    assert out["vs_float32"]["delta_ci"][1] < 0 and out["vs_float32"]["p_value"] < 1e-6


def test_early_stop_rule_error_rate_is_split_over_looks():
    rule = EarlyStop.half_of(80.0, images=1000, chunk=50, alpha=0.001)
    assert rule.looks == 20 and rule.threshold == pytest.approx(0.4)
    assert rule.hopeless(0, 50)  # nothing right in 50: surely below 40 %
    assert not rule.hopeless(15, 50)  # 30 % of 50 could still be 40 %
    assert not rule.hopeless(0, 1000)  # the last look: nothing left to save
    # each look's one-sided bound is at level alpha / looks
    _, upper = proportion_confint(10, 50, alpha=2 * 0.001 / 20, method="beta")
    assert rule.hopeless(10, 50) == (upper < 0.4)


class Constant(torch.nn.Module):
    """Always predicts class ``k``: right exactly on the images labelled k."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x):
        out = torch.zeros(len(x), 10)
        out[:, self.k] = 5.0
        return out


def test_evaluate_stops_a_hopeless_model_and_not_a_good_one():
    labels = torch.tensor([0] * 190 + [1] * 10)  # class 0 on 95 %, class 1 on 5 %
    labels = labels[torch.randperm(200, generator=torch.Generator().manual_seed(0))]
    data = EvalTensors(torch.zeros(200, 3, 2, 2), labels)
    rule = EarlyStop.half_of(95.0, len(data), chunk=20)
    bad = evaluate(Constant(1), data, batch_size=10, early_stop=rule)
    assert bad.stopped_early and bad.images < 200 and bad.images % 20 == 0
    good = evaluate(Constant(0), data, batch_size=10, early_stop=rule)
    assert not good.stopped_early and good.images == 200 and good.top1 == pytest.approx(95.0)
