"""The Recipe carrier: a scheme plus calibrated weight ranges and activation quantization."""
import pickle

import pytest
import torch
from torch import nn

from mixquant_core.errors import MixQuantError
from mixquant_core.evaluation.evaluator import plan_key
from mixquant_core.plans.plan import applied
from mixquant_core.quant.activations import ActQuant, act_qparams, fake_quantize_act, quantized_inputs
from mixquant_core.quant.quantizers import fake_quantize, fake_quantize_with_ratios
from mixquant_core.quant.recipe import Recipe, WeightRanges, canonical, label_of, quantize_layer


@pytest.mark.parametrize("scheme", ["asymmetric", "symmetric", "per-channel"])
def test_ratio_one_is_min_max(scheme):
    w = torch.randn(6, 3, 3, 3)
    rows = 6 if scheme == "per-channel" else 1
    got = fake_quantize_with_ratios(w, 4, scheme, torch.ones(rows))
    assert torch.equal(got, fake_quantize(w, 4, scheme))


def test_smaller_ratio_clips_the_outlier():
    w = torch.tensor([[0.0, 0.1, 0.2, 0.05, 5.0]])
    clipped = fake_quantize_with_ratios(w, 4, "asymmetric", torch.tensor([0.1]))
    assert clipped.max() <= 0.5 + 1e-6  # the outlier is clipped to the shrunk range
    assert (clipped - w)[0, :4].abs().max() < (fake_quantize(w, 4, "asymmetric") - w)[0, :4].abs().max()


def test_bad_ratios_are_one_line_errors():
    w = torch.randn(4, 8)
    with pytest.raises(MixQuantError, match="rows"):
        fake_quantize_with_ratios(w, 4, "per-channel", torch.ones(3))
    with pytest.raises(MixQuantError, match=r"\(0, 1\]"):
        fake_quantize_with_ratios(w, 4, "per-channel", torch.full((4,), float("nan")))


def test_recipe_keys_follow_content():
    ranges = WeightRanges("fisher", {("fc", 4): (0.5,)})
    a, b = Recipe("asymmetric", ranges), Recipe("asymmetric", WeightRanges("fisher", {("fc", 4): (0.5,)}))
    c = Recipe("asymmetric", WeightRanges("fisher", {("fc", 4): (0.6,)}))
    assert a == b and hash(a) == hash(b) and a != c and label_of(a) != label_of(c)
    assert plan_key({"fc": 4}, a) == plan_key({"fc": 4}, b) != plan_key({"fc": 4}, c)
    assert canonical(Recipe("per-channel")) == "per-channel" and label_of(Recipe("per-channel")) == "per-channel"
    assert pickle.loads(pickle.dumps(a)) == a  # Ray ships recipes to its workers
    w = torch.randn(3, 5)
    assert torch.equal(quantize_layer(a, "other", w, 4), fake_quantize(w, 4, "asymmetric"))
    assert torch.equal(quantize_layer(a, "fc", w, 4), fake_quantize_with_ratios(w, 4, "asymmetric", torch.tensor([0.5])))
    with pytest.raises(MixQuantError, match="unknown quantizer"):
        Recipe("nope")


def test_act_grid_holds_zero_and_a_constant_range():
    scale, zp = act_qparams(0.5, 2.0)  # widened to [0, 2]
    assert zp == 0 and scale == pytest.approx(2.0 / 255)
    scale, zp = act_qparams(3.0, 3.0)
    assert scale > 0 and 0 <= zp <= 255
    x = torch.tensor([0.0, 1.0, -1.0, 100.0])
    s, z = act_qparams(-1.0, 1.0)
    y = fake_quantize_act(x, s, z)
    assert y[0] == 0.0 and y[3] <= 1.0 + s  # zero exact, out-of-range saturates
    for bad in [(float("nan"), 1.0), (2.0, 1.0)]:
        with pytest.raises(MixQuantError):
            act_qparams(*bad)


def test_applied_quantizes_inputs_and_removes_its_hooks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    x = torch.randn(8, 4)
    acts = ActQuant(8, "minmax", {"2": (0.0, 0.01)})  # a tiny range: layer 2's inputs saturate
    recipe = Recipe("asymmetric", acts=acts)
    plain = model(x)
    with applied(model, {"0": 8, "2": 8}, recipe) as m:
        quantized = m(x)
    s, z = act_qparams(0.0, 0.01)
    with torch.no_grad():
        w0 = fake_quantize(model[0].weight, 8, "asymmetric")
        h = torch.relu(x @ w0.T + model[0].bias)
        expect = fake_quantize_act(h, s, z) @ fake_quantize(model[2].weight, 8, "asymmetric").T + model[2].bias
    assert torch.allclose(quantized, expect, atol=1e-6)
    assert torch.equal(model(x), plain)  # weights restored, hooks gone
    assert not model[2]._forward_pre_hooks
    with pytest.raises(MixQuantError, match="not a module"):
        with quantized_inputs(model, ActQuant(8, "minmax", {"missing": (0.0, 1.0)})):
            pass


def _tiny_plan(recipe=None):
    from mixquant_core.plans.plan import Plan, recipe_for_plan
    layers = {"0": {"bits": 4, "params": 16}, "2": {"bits": 8, "params": 8}}
    return Plan(model={"source": "t", "name": "tiny", "fingerprint": "x"}, quantizer="per-channel", qem=None,
                candidate_bits=[8, 4], layers=layers, size={},
                recipe_data=recipe_for_plan(recipe, {"0": 4, "2": 8}) if recipe else None)


def test_plan_v2_round_trips_its_recipe_and_v1_still_loads():
    from mixquant_core.plans.plan import Plan
    recipe = Recipe("per-channel", WeightRanges("fisher", {("0", 4): (0.5, 1.0, 0.9, 1.0), ("0", 3): (0.4,) * 4},
                                                {"images": 8}),
                    ActQuant(8, "percentile", {"0": (-1.0, 2.0), "2": (0.0, 3.5), "gone": (0.0, 1.0)}))
    plan = _tiny_plan(recipe)
    back = Plan.from_json(plan.to_json())
    assert back.version == 2
    assert back.recipe.weight_ranges.ratios == {("0", 4): (0.5, 1.0, 0.9, 1.0)}  # only the planned bits kept
    assert dict(back.recipe.acts.ranges) == {"0": (-1.0, 2.0), "2": (0.0, 3.5)}
    v1 = plan.to_dict()
    v1["version"] = 1
    del v1["recipe"]
    assert Plan.from_dict(v1).recipe == "per-channel"  # weights only


@pytest.mark.parametrize("edit, words", [
    (lambda r: r["acts"]["ranges"].update({"nowhere": [0, 1]}), "not in the plan"),
    (lambda r: r["acts"]["ranges"].update({"0": [2, 1]}), "not a finite, ordered range"),
    (lambda r: r["acts"].update({"bits": 4}), "recipe/acts/bits"),
    (lambda r: r["weight_ranges"]["ratios"][0][2].__setitem__(0, 0), "recipe/weight_ranges"),
    (lambda r: r["weight_ranges"]["ratios"][0].__setitem__(1, 8), "not in the plan"),
])
def test_a_bad_recipe_is_one_line(edit, words):
    from mixquant_core.errors import PlanError
    from mixquant_core.plans.plan import Plan
    recipe = Recipe("per-channel", WeightRanges("fisher", {("0", 4): (0.5,) * 4}), ActQuant(8, "minmax", {"0": (0.0, 1.0)}))
    data = _tiny_plan(recipe).to_dict()
    edit(data["recipe"])
    with pytest.raises(PlanError, match=words) as err:
        Plan.from_dict(data)
    assert "\n" not in str(err.value)
