"""Size accounting on a hand-built model; plan JSON round trip and every invalid-plan error."""
import json

import pytest
import torch
from torch import nn

from mixquant_core.errors import PlanError
from mixquant_core.models.layers import find_layers
from mixquant_core.models.registry import LoadedModel, fingerprint
from mixquant_core.plans.plan import Plan, applied, quantize_model_
from mixquant_core.models.preprocess import Preprocess
from mixquant_core.plans.size import float32_bytes, params_per_bits, plan_size
from mixquant_core.workspace import Workspace


def hand_model():
    torch.manual_seed(0)
    # conv: 4*3*3*3 = 108 weights + 4 bias; bn: 4 weight + 4 bias + 4 mean + 4 var + 1 counter;
    # fc: 10*4 = 40 weights + 10 bias
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 10)).eval()


def test_float32_bytes_counts_parameters_and_buffers():
    assert float32_bytes(hand_model()) == (108 + 4 + 4 + 4 + 4 + 4 + 1 + 40 + 10) * 4


@pytest.mark.parametrize("quantizer, overhead", [("asymmetric", (5, 5)), ("symmetric", (4, 4)), ("per-channel", (4 * 5, 10 * 5)),
                                                   ("asymmetric-mse", (5, 5)), ("symmetric-mse", (4, 4)),
                                                   ("per-channel-mse", (4 * 5, 10 * 5))])
def test_plan_size_by_hand(quantizer, overhead):
    model = hand_model()
    layers = find_layers(model)
    total = float32_bytes(model)
    s = plan_size(total, layers, [4, 3], quantizer)
    conv_bytes = 108 * 4 // 8 + overhead[0]  # 54 bytes of 4-bit codes
    fc_bytes = 15 + overhead[1]  # 40 * 3 bits = 120 bits = 15 bytes
    expect = total - (108 + 40) * 4 + conv_bytes + fc_bytes
    assert s.plan_mb == pytest.approx(expect / 1e6)
    assert s.float32_mb == pytest.approx(total / 1e6)
    assert s.compression == pytest.approx(total / expect)
    assert s.avg_bits == pytest.approx((108 * 4 + 40 * 3) / 148)
    assert params_per_bits(layers, [4, 3]) == {4: 108, 3: 40}


def test_odd_bit_count_rounds_up_to_bytes():
    model = nn.Sequential(nn.Linear(3, 1, bias=False))  # 3 weights at 3 bits = 9 bits -> 2 bytes
    s = plan_size(float32_bytes(model), find_layers(model), [3], "symmetric")
    assert s.plan_mb * 1e6 == pytest.approx(2 + 4)


def tiny_workspace(model) -> Workspace:
    loaded = LoadedModel(model, "tinynet", "file", Preprocess(32, 32), fingerprint(model))
    return Workspace(loaded, device="cpu")


def test_plan_json_round_trip(tiny_model, tmp_path):
    ws = tiny_workspace(tiny_model)
    plan = ws.plan(40.0)
    path = tmp_path / "plan.json"
    plan.save(path)
    back = Plan.load(path)
    assert back == plan
    assert back.bits == {l.name: int(b) for l, b in zip(ws.layers, ws.bits_for([40.0])[0])}
    assert list(back.layers) == [l.name for l in ws.layers]  # model order survives JSON
    assert back.size["avg_bits"] == pytest.approx(ws.size(ws.bits_for([40.0])[0]).avg_bits)
    assert back.model == {"source": "file", "name": "tinynet", "fingerprint": fingerprint(tiny_model)}


def _valid(tiny_model) -> dict:
    return tiny_workspace(tiny_model).plan(10.0).to_dict()


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("layers"), "'layers' is a required property"),
    (lambda d: d.update(format="something-else"), "not a MixQuant plan"),
    (lambda d: d.update(version=99), "version 99 is newer"),
    (lambda d: d.update(quantizer="fp8"), "at quantizer"),
    (lambda d: d.update(qem=0.5), "at qem"),
    (lambda d: d["layers"]["pw"].update(bits=9), "at layers/pw/bits"),
    (lambda d: d["layers"]["pw"].update(bits=1), "at layers/pw/bits"),
    (lambda d: d["layers"]["pw"].update(bits="4"), "at layers/pw/bits"),
    (lambda d: d.update(layers={}), "at layers"),
])
def test_invalid_plans_rejected_with_reason(tiny_model, mutate, message):
    data = _valid(tiny_model)
    mutate(data)
    with pytest.raises(PlanError, match=message):
        Plan.from_json(json.dumps(data))


def test_not_json_rejected():
    with pytest.raises(PlanError, match="not valid JSON"):
        Plan.from_json(b"\x89PNG not json")
    with pytest.raises(PlanError, match="must be an object"):
        Plan.from_json("[1, 2]")


def test_plan_for_another_model_rejected(tiny_model):
    plan = Plan.from_dict(_valid(tiny_model))
    other = nn.Sequential(nn.Conv2d(3, 8, 3))
    with pytest.raises(PlanError, match="another model.*layer 'stem' is not in this model"):
        plan.check_against(other)
    resized = type(tiny_model)(num_classes=7)
    with pytest.raises(PlanError, match="layer 'fc' has 112 weights here, 160 in the plan"):
        plan.check_against(resized)


def test_applied_fake_quantizes_then_restores_exactly(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    ref = tiny_model(x)
    with applied(tiny_model, {"conv": 2, "fc": 2}, "asymmetric") as m:
        assert m is tiny_model
        w = m.conv.weight
        assert len(torch.unique(w)) <= 4  # on the 2-bit grid
        assert not torch.allclose(m(x), ref)
    after = tiny_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_quantize_model_in_place_follows_plan(tiny_model):
    plan = Plan.from_dict(_valid(tiny_model))
    quantize_model_(tiny_model, plan)
    for name, b in plan.bits.items():
        assert len(torch.unique(getattr(tiny_model, name).weight)) <= 2**b
