"""Reconstruction (AdaRound rounding fitted block-wise as in BRECQ) on a tiny model."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mixquant_core.recon.blocks import model_stages
from mixquant_core.errors import MixQuantError
from mixquant_core.recon.reconstruct import (ReconConfig, apply_quantized_, reconstruct,
                                       reconstruct_plan)
from recon_support import MIXED_BITS, chain_output, images, tiny_chain, workspace

CFG = ReconConfig(iters=100, batch_size=8, lr=3e-2, seed=0, eval_samples=16)


pytestmark = pytest.mark.usefixtures("one_thread")  # recon_support's fixture, for every test here


@pytest.fixture(scope="module")
def recon(one_thread):
    model = tiny_chain()
    ws = workspace(model)
    plan = ws.plan_from_bits(MIXED_BITS)
    return model, plan, reconstruct_plan(model, plan, images(), CFG)


def test_learned_rounding_lowers_block_error(recon):
    _, _, result = recon
    nearest = sum(b.mse_nearest for b in result.blocks)
    learned = sum(b.mse_learned for b in result.blocks)
    assert learned < 0.95 * nearest, (nearest, learned)
    assert all(b.mse_learned <= b.mse_nearest * 1.02 for b in result.blocks)


def test_every_weight_on_its_plans_grid(recon):
    model, plan, result = recon
    assert list(result.layers) == list(plan.layers)
    target = tiny_chain()
    apply_quantized_(target, result.layers)
    modules = dict(target.named_modules())
    for name, q in result.layers.items():
        b = plan.bits[name]
        assert q.nbits == b and int(q.codes.max()) < 2**b and int(q.zero_point.max()) < 2**b
        w = modules[name].weight.detach()
        codes = w / q.scale + q.zero_point
        assert torch.allclose(codes, codes.round(), atol=1e-3)  # on the b-bit grid
        assert torch.equal(w, (q.codes.float() - q.zero_point) * q.scale)  # exactly its codes
        per_channel = w.reshape(w.shape[0], -1)
        assert max(len(torch.unique(row)) for row in per_channel) <= 2**b


def test_model_passed_in_is_untouched(recon):
    model, _, _ = recon
    fresh = tiny_chain()
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


def test_same_seed_same_codes(recon):
    model, plan, _ = recon
    short = ReconConfig(iters=20, batch_size=4, lr=3e-2, seed=7, eval_samples=8)
    first = reconstruct_plan(model, plan, images(), short)
    again = reconstruct_plan(model, plan, images(), short)
    for name in first.layers:
        assert torch.equal(first.layers[name].codes, again.layers[name].codes)
        assert torch.equal(first.layers[name].scale, again.layers[name].scale)


def test_bad_inputs_refused():
    model = tiny_chain()
    with pytest.raises(MixQuantError, match="not in this model"):
        reconstruct(model, {"nope": 4}, images(4), CFG)
    with pytest.raises(MixQuantError, match="bit-width"):
        reconstruct(model, {"0.0": 9}, images(4), CFG)
    with pytest.raises(MixQuantError, match="at least 1"):
        reconstruct(model, {"0.0": 4}, images(4), ReconConfig(iters=0))
    with torch.no_grad():
        model[0][0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(MixQuantError, match="NaN"):
        reconstruct(model, {"0.0": 4}, images(4), CFG)


def test_unsupported_architecture_named():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.a(x)

    with pytest.raises(MixQuantError, match="Branchy"):
        reconstruct(Branchy(), {"a": 4}, images(4), CFG)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "mobilenet_v2"])
def test_block_chain_reproduces_the_model(name):
    from mixquant_core.models.layers import find_layers
    from mixquant_core.models.registry import build_model

    model = build_model(name, pretrained=False).model
    x = images(2, 64)
    stages = model_stages(model)
    with torch.no_grad():
        assert torch.allclose(chain_output(stages, x), model(x), atol=1e-5)
    covered = [n for s in stages for n in s.layers]
    assert covered == [l.name for l in find_layers(model)]


@pytest.mark.parametrize("scheme", ["per-channel-mse", "asymmetric-mse", "symmetric-mse", "per-channel"])
@given(nbits=st.integers(2, 8), seed=st.integers(0, 2**31 - 1))
def test_base_grid_is_the_round_to_nearest_quantizer(scheme, nbits, seed):
    # one implementation: the grid AdaRound learns on is the named quantizer's, so a reconstruction
    # differs from that quantizer's round-to-nearest only in the rounding
    from mixquant_core.quant.quantizers import fake_quantize, quantize
    from mixquant_core.recon.adaround import AdaRoundWeight

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 40, generator=g) * torch.rand(6, 1, generator=g)
    w[:, 0] *= 8  # an outlier per channel: the MSE ranges clip it
    param = AdaRoundWeight(w, nbits, scheme)
    _, meta = quantize(w, nbits, scheme)
    assert torch.equal(param.scale, meta.scale)
    assert int(param.codes("hard").min()) >= 0 and int(param.codes("hard").max()) <= 2**nbits - 1
    param.mode = "nearest"  # rounds ties up where torch.round rounds them to even: allow one step there
    nearest = param(w)
    assert torch.all((nearest - fake_quantize(w, nbits, scheme)).abs() <= param.scale * (1 + 1e-5))
    assert float((nearest - fake_quantize(w, nbits, scheme)).abs().gt(param.scale * 1e-3).float().mean()) < 0.01