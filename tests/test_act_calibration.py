"""Activation ranges calibrated on images (issue #20): the methods on inputs of known range, the hooks,
bad input (NaN, constant images, one image), and W8A8 evaluation against a computation by hand."""
import pytest
import torch
from torch import nn

from mixquant_core.data.image_sets import EvalTensors
from mixquant_core.errors import MixQuantError
from mixquant_core.models.registry import LoadedModel
from mixquant_core.plans.plan import Plan
from mixquant_core.quant import act_calibration
from mixquant_core.quant.act_calibration import calibrate, calibration_notes, choose_range, quant_mse
from mixquant_core.quant.activations import act_qparams, fake_quantize_act
from mixquant_core.quant.quantizers import fake_quantize
from mixquant_core.quant.recipe import Recipe


class Probe(nn.Module):
    """Layer "a" sees the images themselves; "b" sees a's ReLU output; "c" (Linear) their mean."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 1)
        self.b = nn.Conv2d(2, 2, 1)
        self.c = nn.Linear(2, 3)

    def forward(self, x):
        return self.c(self.b(torch.relu(self.a(x))).mean(dim=(2, 3)))


def images(x: torch.Tensor) -> EvalTensors:
    return EvalTensors(x.float(), torch.zeros(len(x), dtype=torch.long))


@pytest.fixture
def probe():
    torch.manual_seed(0)
    return Probe().eval()


def test_minmax_is_exact_and_hooks_are_removed(probe):
    x = torch.rand(10, 1, 4, 4) * 3 - 1  # in [-1, 2)
    acts = calibrate(probe, ["a", "b", "c"], images(x), 8, "minmax", batch_size=3)
    assert acts.ranges["a"] == (float(x.min()), float(x.max()))
    with torch.no_grad():
        h = torch.relu(probe.a(x))
    assert acts.ranges["b"] == pytest.approx((float(h.min()), float(h.max())))
    assert acts.bits == 8 and acts.method == "minmax" and acts.calibration["images"] == 10
    assert all(not m._forward_pre_hooks for m in probe.modules())


def test_percentile_clips_an_outlier_and_mse_beats_minmax():
    torch.manual_seed(1)
    x = torch.randn(200_000)
    x[7] = 1000.0  # one huge value
    lo, hi = float(x.min()), float(x.max())
    p_lo, p_hi = choose_range(lo, hi, x, 8, "percentile")
    assert 3.0 < p_hi < 5.0 and -5.0 < p_lo < -3.0  # the 99.99th percentile of N(0, 1) is 3.7
    m_lo, m_hi = choose_range(lo, hi, x, 8, "mse")
    assert m_hi < hi and quant_mse(x, m_lo, m_hi, 8) < quant_mse(x, lo, hi, 8)
    y = torch.rand(1000)  # nothing to clip: mse may not do worse than min/max
    assert quant_mse(y, *choose_range(0.0, float(y.max()), y, 8, "mse"), 8) <= quant_mse(y, 0.0, float(y.max()), 8)


def test_memory_is_bounded_by_the_sample_cap(probe, monkeypatch):
    monkeypatch.setattr(act_calibration, "SAMPLE_CAP", 100)
    monkeypatch.setattr(act_calibration, "PER_BATCH", 60)
    seen = []
    original = act_calibration._Stats.add

    def spy(self, x, name, gen):
        original(self, x, name, gen)
        seen.append(self.kept)
    monkeypatch.setattr(act_calibration._Stats, "add", spy)
    x = torch.rand(40, 1, 8, 8)
    acts = calibrate(probe, ["a"], images(x), 8, "percentile", batch_size=4)
    assert max(seen) <= 2 * 100 + 60
    assert x.min() <= acts.ranges["a"][0] <= acts.ranges["a"][1] <= x.max()


def test_nan_input_is_one_line_naming_the_layer(probe):
    with torch.no_grad():
        probe.a.bias[0] = float("nan")
    with pytest.raises(MixQuantError, match="input of layer 'b' is NaN/Inf") as err:
        calibrate(probe, ["a", "b"], images(torch.rand(4, 1, 2, 2)), 8, "minmax")
    assert "\n" not in str(err.value)
    assert all(not m._forward_pre_hooks for m in probe.modules())  # removed on error too
    x = torch.rand(4, 1, 2, 2)
    x[1, 0, 0, 0] = float("inf")
    with pytest.raises(MixQuantError, match="NaN/Inf"):
        calibrate(Probe().eval(), ["a"], images(x), 8, "minmax")


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_constant_images_and_one_image_give_finite_grids(probe, method):
    const = calibrate(probe, ["a", "b"], images(torch.zeros(3, 1, 4, 4)), 8, method)
    assert const.ranges["a"] == (0.0, 0.0) and "a" in const.calibration["constant_inputs"]
    scale, zp = const.qparams("a")
    assert scale > 0 and torch.isfinite(fake_quantize_act(torch.randn(5), scale, zp)).all()
    one = calibrate(probe, ["a"], images(torch.rand(1, 1, 4, 4)), 8, method)
    notes = calibration_notes(one)
    assert any("single image" in n for n in notes)
    assert any("constant" in n for n in calibration_notes(const))


def test_keep_float_and_bad_settings(probe):
    acts = calibrate(probe, ["a", "b", "c"], images(torch.rand(2, 1, 2, 2)), 8, "minmax", keep_float=["a"])
    assert set(acts.ranges) == {"b", "c"} and acts.calibration["keep_float"] == ["a"]
    with pytest.raises(MixQuantError, match="'zz', which is not a quantizable layer"):
        calibrate(probe, ["a"], images(torch.rand(2, 1, 2, 2)), 8, "minmax", keep_float=["zz"])
    with pytest.raises(MixQuantError, match="unknown activation range method"):
        calibrate(probe, ["a"], images(torch.rand(2, 1, 2, 2)), 8, "best")
    with pytest.raises(MixQuantError, match="activation bits must be one of 8"):
        calibrate(probe, ["a"], images(torch.rand(2, 1, 2, 2)), 4, "minmax")


def _workspace(model, **kw):
    from mixquant_core.workspace import Workspace

    loaded = LoadedModel(model=model, name="probe", source="test", preprocess=None, fingerprint="p")
    return Workspace(loaded, "per-channel", bits=[8, 4], device="cpu", engine="torch", **kw)


def test_w8a8_evaluation_equals_a_computation_by_hand(probe):
    from mixquant_core.evaluations import Evaluations

    torch.manual_seed(2)
    calib, data = images(torch.rand(6, 1, 3, 3)), images(torch.rand(5, 1, 3, 3))
    data.labels[:] = torch.tensor([0, 1, 2, 0, 1])
    ws = _workspace(probe, act_bits=8, act_range="minmax", calib=calib)
    acts = ws.recipe.acts
    assert set(acts.ranges) == {"a", "b", "c"}
    m = Evaluations(ws).evaluate_bits(ws.uniform(8), data)
    with torch.no_grad():
        def q(name, t):
            return fake_quantize_act(t, *act_qparams(*acts.ranges[name]))

        def w(layer):
            return fake_quantize(layer.weight, 8, "per-channel")
        x = data.inputs()
        h = torch.relu(nn.functional.conv2d(q("a", x), w(probe.a), probe.a.bias))
        h = nn.functional.conv2d(q("b", h), w(probe.b), probe.b.bias).mean(dim=(2, 3))
        logits = q("c", h) @ w(probe.c).T + probe.c.bias
    expect = nn.functional.cross_entropy(logits, data.labels)
    assert m.loss == pytest.approx(float(expect), rel=1e-5)
    assert m.top1 == pytest.approx(100.0 * float((logits.argmax(1) == data.labels).float().mean()))
    plan = Plan.from_json(ws.plan_from_bits(ws.uniform(8)).to_json())  # the plan file carries the ranges
    assert isinstance(plan.recipe, Recipe) and dict(plan.recipe.acts.ranges) == dict(acts.ranges)
    assert Evaluations(ws).evaluate_plan(plan, data).loss == pytest.approx(m.loss)


def test_workspace_refuses_bad_activation_settings_early(probe):
    with pytest.raises(MixQuantError, match="unknown activation range method"):
        _workspace(probe, act_bits=8, act_range="nope")
    with pytest.raises(MixQuantError, match="'x', which is not a quantizable layer"):
        _workspace(probe, act_bits=8, act_keep_float=["x"])
    ws = _workspace(probe, act_bits=8)  # no calibration images: the recipe is a one-line error
    with pytest.raises(MixQuantError, match="need calibration images"):
        ws.recipe
