"""GPTQ rounding (issue #22 part 2): layer output error no worse than round-to-nearest on the same
grid, codes on the grid, grouped/depthwise convs against a per-group brute force, the packed
attention projection, degenerate calibration (dead channels, one image, NaN), gptq+brecq's start,
and the CLI round trip."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from mixquant_core.errors import MixQuantError
from mixquant_core.models.layers import layer_names, weight_ref
from mixquant_core.quant.codes import unsigned_grid
from mixquant_core.recon.adaround import AdaRoundWeight
from mixquant_core.models.layer_inputs import Hessian, LayerInputs, conv_columns
from mixquant_core.recon.gptq import gptq_layer
from mixquant_core.recon.reconstruct import ReconConfig, reconstruct
from recon_support import MIXED_BITS, images, tiny_chain

pytestmark = pytest.mark.usefixtures("one_thread")


def _hessian(layer: nn.Module, x: torch.Tensor, name: str = "layer") -> torch.Tensor:
    """The layer's Hessians as run_gptq collects them (a forward hook during a real forward)."""
    holder = nn.Sequential(layer)
    coll = LayerInputs(weight_ref(holder, "0"))
    with coll, torch.no_grad():
        holder(x)
    return coll.matrices(name)


def _out_err(layer: nn.Module, x: torch.Tensor, w_hat: torch.Tensor) -> float:
    with torch.no_grad():
        ref = layer(x)
        saved = layer.weight.detach().clone()
        layer.weight.copy_(w_hat)
        got = layer(x)
        layer.weight.copy_(saved)
    return float((ref - got).pow(2).sum())


def _nearest(w: torch.Tensor, bits: int, scheme: str) -> torch.Tensor:
    codes, scale, zp = unsigned_grid(w, bits, scheme)
    return (codes - zp) * scale


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), bits=st.integers(2, 8), cin=st.integers(4, 48), cout=st.integers(1, 24),
       scheme=st.sampled_from(["per-channel", "asymmetric", "symmetric", "per-channel-mse", "per-channel-symmetric"]))
def test_gptq_output_error_is_at_most_round_to_nearest(seed, bits, cin, cout, scheme):
    """The property GPTQ exists for: on its own calibration inputs, the layer's output moves less
    than with round-to-nearest on the same grid (correlated inputs, as real activations are)."""
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(cin, cout)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(cout, cin, generator=g))
    mix = torch.randn(cin, cin, generator=g)
    x = torch.randn(256, cin, generator=g) @ mix  # correlated features
    q, start = gptq_layer("fc", layer.weight, _hessian(layer, x), bits, scheme)
    rtn = _nearest(layer.weight.detach(), bits, scheme)
    assert _out_err(layer, x, q.weight()) <= _out_err(layer, x, rtn) * (1 + 1e-4) + 1e-9
    # the same grid as round-to-nearest, codes on it
    _, scale, zp = unsigned_grid(layer.weight.detach(), bits, scheme)
    assert torch.equal(q.scale, scale) and torch.equal(q.zero_point, zp)
    assert q.codes.dtype == torch.uint8 and int(q.codes.max()) <= 2 ** bits - 1
    assert torch.isfinite(start).all()


def _grouped_conv(groups: int, cin: int = 6, cout: int = 6, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(cin, cout, 3, padding=1, stride=2, groups=groups)


@pytest.mark.parametrize("groups", [1, 2, 6])  # dense, grouped, depthwise
def test_conv_columns_reproduce_the_conv(groups):
    conv = _grouped_conv(groups)
    x = torch.randn(3, 6, 9, 9)
    cols = conv_columns(conv, x)  # [G, C, N*L]
    w = conv.weight.detach().reshape(groups, 6 // groups, -1)
    out = torch.bmm(w, cols)  # [G, R, N*L]
    with torch.no_grad():
        ref = conv(x) - conv.bias[None, :, None, None]
    n, _, h, wd = ref.shape
    got = out.reshape(groups, 6 // groups, n, h * wd).permute(2, 0, 1, 3).reshape(n, 6, h, wd)
    assert torch.allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("groups", [2, 6])
def test_grouped_gptq_matches_each_group_alone(groups):
    """One batched solve over the groups == GPTQ of each group's slice as its own dense conv."""
    conv = _grouped_conv(groups)
    x = torch.randn(4, 6, 9, 9)
    q, _ = gptq_layer("conv", conv.weight, _hessian(conv, x), 3, "per-channel")
    per = 6 // groups
    for g in range(groups):
        alone = nn.Conv2d(per, per, 3, padding=1, stride=2)
        with torch.no_grad():
            alone.weight.copy_(conv.weight[g * per:(g + 1) * per])
        xs = x[:, g * per:(g + 1) * per]
        qa, _ = gptq_layer("conv", alone.weight, _hessian(alone, xs), 3, "per-channel")
        assert torch.equal(q.codes[g * per:(g + 1) * per], qa.codes)


def test_same_padding_convs_of_efficientnet_are_unfolded_as_they_run():
    utils = pytest.importorskip("efficientnet_lite_pytorch.utils")
    conv = utils.Conv2dStaticSamePadding(4, 4, 3, stride=2, groups=4, bias=False, image_size=10)
    x = torch.randn(2, 4, 10, 10)
    out = torch.bmm(conv.weight.detach().reshape(4, 1, -1), conv_columns(conv, x))
    with torch.no_grad():
        ref = conv(x)
    assert torch.allclose(out.reshape(4, 2, -1).transpose(0, 1).reshape(ref.shape), ref, atol=1e-5)


def test_dead_channels_one_image_and_zero_weights_give_finite_codes():
    """All-zero input channels (singular H), an all-zero weight channel (Lite0 has five), one image."""
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    with torch.no_grad():
        conv.weight[1].zero_()
    x = torch.randn(1, 4, 6, 6)
    x[:, 2] = 0  # a dead input channel: its 3x3 Hessian is all zero
    h = _hessian(conv, x)
    assert (torch.diagonal(h[2]) == 0).all()
    q, start = gptq_layer("dw", conv.weight, h, 4, "per-channel-mse")
    assert torch.isfinite(q.weight()).all() and torch.isfinite(start).all()
    assert (q.weight()[1] == 0).all()  # zero is on the grid and stays zero
    assert (q.weight()[2] == 0).all()  # dead columns are zeroed, as the reference implementation does
    lin = nn.Linear(8, 3)
    q, _ = gptq_layer("fc", lin.weight, _hessian(lin, torch.randn(1, 8)), 2, "asymmetric")  # rank 1
    assert torch.isfinite(q.weight()).all()


def test_nan_activations_are_one_line():
    lin = nn.Linear(4, 2)
    x = torch.randn(5, 4)
    x[0, 0] = float("nan")
    with pytest.raises(MixQuantError, match="NaN/Inf") as exc:
        _hessian(lin, x, "fc")
    assert "\n" not in str(exc.value)
    with pytest.raises(MixQuantError, match="NaN/Inf"):
        calib = images(2)
        calib[0, 0, 0, 0] = float("nan")
        reconstruct(tiny_chain(), {"3": 4}, calib, ReconConfig(method="gptq"))


def test_packed_attention_projection_gets_one_hessian_per_input():
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    holder = nn.ModuleDict({"attn": mha})
    x, kv = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    coll = LayerInputs(weight_ref(holder, "attn.in_proj_weight"))
    with coll, torch.no_grad():
        mha(x, x, x)  # self-attention: q, k and v read the same input
    assert coll.matrices("attn.in_proj_weight").shape == (1, 8, 8)
    coll = LayerInputs(weight_ref(holder, "attn.in_proj_weight"))
    with coll, torch.no_grad():
        mha(x, kv, kv)
    h = coll.matrices("attn.in_proj_weight")
    assert h.shape == (3, 8, 8) and torch.allclose(h[1], h[2]) and not torch.allclose(h[0], h[1])
    q, _ = gptq_layer("attn.in_proj_weight", mha.in_proj_weight, h, 4, "per-channel")
    assert q.codes.shape == (24, 8)


def test_gptq_on_a_chain_keeps_plan_bits_and_beats_nearest_block_error():
    model = tiny_chain()
    bits = dict(zip(layer_names(model), MIXED_BITS))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = reconstruct(model, bits, images(16), ReconConfig(method="gptq", batch_size=8))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert list(result.layers) == list(bits) and all(result.layers[n].nbits == b for n, b in bits.items())
    assert sum(b.mse_learned for b in result.blocks) <= sum(b.mse_nearest for b in result.blocks)
    assert all(torch.isfinite(q.weight()).all() for q in result.layers.values())


def test_a_layer_with_fewer_samples_than_columns_keeps_nearest_and_says_so():
    """Lite0's classifier case: one input sample per image, more input columns than images. Its
    Hessian is rank-deficient, GPTQ would fit the calibration images; it keeps round-to-nearest."""
    from mixquant_core.quant.codes import nearest_layers

    model = tiny_chain()
    bits = dict(zip(layer_names(model), MIXED_BITS))
    head = "3"  # Linear(16, 10): one sample per image
    nearest = nearest_layers(model, bits, ReconConfig().scheme)
    for grid in ("plan", "best"):
        few = reconstruct(model, bits, images(8), ReconConfig(method="gptq", batch_size=4, gptq_grid=grid))
        assert torch.equal(few.layers[head].codes, nearest[head].codes)
        assert few.notes == [f"{head}: round-to-nearest, its Hessian has 8 calibration samples for 16 input "
                             "columns (GPTQ would fit the calibration images)"]
        assert not torch.equal(few.layers["2.0"].codes, nearest["2.0"].codes)  # the convs see 8 x 144 columns
    enough = reconstruct(model, bits, images(32), ReconConfig(method="gptq", batch_size=8, gptq_grid="plan"))
    assert enough.notes == [] and not torch.equal(enough.layers[head].codes, nearest[head].codes)
    both = reconstruct(model, bits, images(8), ReconConfig(method="gptq+brecq", iters=1, batch_size=4))
    assert both.notes == [f"GPTQ start of {few.notes[0]}"]


def test_adaround_started_from_gptq_reproduces_its_rounding():
    lin = nn.Linear(16, 6)
    x = torch.randn(64, 16) @ torch.randn(16, 16)
    q, start = gptq_layer("fc", lin.weight, _hessian(lin, x), 3, "per-channel-mse")
    p = AdaRoundWeight(lin.weight.detach(), 3, "per-channel-mse", start=start)
    assert torch.equal(p.codes("hard"), q.codes.float())
    assert torch.equal(p.codes("nearest"), q.codes.float())
    inside = (q.codes > 0) & (q.codes < 7)  # the soft weights start at GPTQ's updated weights on the grid
    assert torch.allclose(p(lin.weight)[inside], start[inside], atol=1e-5)


def test_unchained_models_get_one_float_pass():
    class Unchained(nn.ModuleList):  # no chain of blocks blocks.py knows
        def forward(self, x):
            return self[1](self[0](x).mean((2, 3)))

    torch.manual_seed(0)
    model = Unchained([nn.Conv2d(3, 4, 3), nn.Linear(4, 2)]).eval()
    result = reconstruct(model, {"0": 4, "1": 3}, images(4), ReconConfig(method="gptq"))
    assert set(result.layers) == {"0", "1"} and result.blocks == []


def test_cli_gptq_writes_an_export_load_reads(data_root, tmp_path, capsys):
    from mixquant_cli.main import main

    out = tmp_path / "gptq.safetensors"
    argv = ["reconstruct", "--method", "gptq", "--uniform", "4", "--quantizer", "per-channel", "--calib",
            str(data_root / "imagenet-calib-1000"), "--calib-images", "2", "--batch-size", "2", "--device", "cpu",
            "--gptq-inputs", "layer", "--out", str(out), "--no-progress", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "gptq" and report["calib_images"] == 2
    # two images: the classifier's Hessian has 2 samples for 1280 columns, so it stays at nearest
    assert any(line.startswith("_fc: round-to-nearest, its Hessian has 2 calibration samples for 1280")
               for line in report["notes"])
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        recorded = json.loads(f.metadata()["reconstruction"])["config"]
    assert recorded["gptq_inputs"] == "layer" and recorded["act_order"] is True and recorded["gptq_grid"] == "best"
    assert main(["load", str(out), "--json"]) == 0
    loaded = json.loads(capsys.readouterr().out)
    assert loaded["model"] == "efficientnet_lite0" and loaded["layers"] == 50


@pytest.mark.parametrize("argv, message", [
    (["--method", "gptq2"], "invalid choice: 'gptq2'"),
    (["--method", "gptq", "--damp", "0"], "--damp: must be above 0 and at most 1, got 0"),
    (["--method", "gptq", "--damp", "nan"], "--damp: must be a finite number"),
    (["--method", "gptq", "--gptq-inputs", "floats"], "invalid choice: 'floats'"),
    (["--method", "gptq", "--gptq-grid", "widest"], "invalid choice: 'widest'"),
])
def test_cli_bad_gptq_options_are_one_usage_line(argv, message, capsys, tmp_path):
    from mixquant_cli.main import main

    with pytest.raises(SystemExit) as done:  # argparse's usage error, before any work
        main(["reconstruct", "--uniform", "4", "--calib", str(tmp_path), "--out", str(tmp_path / "x.safetensors")] + argv)
    code, err = done.value.code, capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_fisher_gptq_cost_is_in_fisher_units_and_allocates():
    """Part 3: the allocation cost of GPTQ's weights, on the Fisher table's diagonal."""
    import numpy as np

    from mixquant_core.data.image_sets import EvalTensors
    from recon_support import workspace

    ws = workspace(tiny_chain(), "per-channel")
    g = torch.Generator().manual_seed(0)
    calib = EvalTensors(torch.randn(8, 3, 24, 24, generator=g), torch.randint(0, 10, (8,), generator=g))
    fisher = ws.cost_table("fisher", calib)
    gptq = ws.cost_table("fisher-gptq", calib)
    assert gptq.shape == fisher.shape and np.isfinite(gptq).all() and (gptq >= 0).all()
    # 8 bits: GPTQ's and round-to-nearest's weights are both within half a step; same order of cost
    assert np.allclose(gptq[:, 0], fisher[:, 0], rtol=5, atol=1e-12)
    assert ws.cost_table("fisher-gptq", calib) is gptq  # cached per calibration set
    bits = ws.budget_bits("fisher-gptq", avg_bits=4.0, calib=calib)
    assert ws.size(bits).avg_bits <= 4.0 + 1e-9
    with pytest.raises(MixQuantError, match="needs calibration images"):
        ws.allocation_family("fisher-gptq", "bits")


def test_gptq_on_a_vision_transformer_with_packed_attention():
    from torchvision.models.vision_transformer import VisionTransformer

    from mixquant_core.models.layers import find_layers

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=10).eval()
    bits = {layer.name: 4 for layer in find_layers(model)}
    assert any(n.endswith("in_proj_weight") for n in bits)
    # 16 images: every layer but the classifier head has more input samples than columns, so gets GPTQ
    result = reconstruct(model, bits, torch.randn(16, 3, 32, 32), ReconConfig(method="gptq", scheme="per-channel"))
    assert [line.split(":")[0] for line in result.notes] == ["heads.head"]
    assert set(result.layers) == set(bits)
    assert all(torch.isfinite(q.weight()).all() for q in result.layers.values())
    assert sum(b.mse_learned for b in result.blocks) <= sum(b.mse_nearest for b in result.blocks)


def test_brecq_started_from_gptq_runs_and_records_its_method():
    from mixquant_core.recon.reconstruct import recon_metadata

    model = tiny_chain()
    bits = dict(zip(layer_names(model), MIXED_BITS))
    calib = images(8)
    gptq = reconstruct(model, bits, calib, ReconConfig(method="gptq", batch_size=4))
    both = reconstruct(model, bits, calib, ReconConfig(method="gptq+brecq", iters=2, batch_size=4, warmup=1.0))
    assert set(both.layers) == set(bits)
    # 2 warm-up steps move few weights: most codes are still GPTQ's (the start reproduces them exactly)
    same = sum(int((both.layers[n].codes == gptq.layers[n].codes).sum()) for n in bits)
    assert same >= 0.9 * sum(q.codes.numel() for q in gptq.layers.values())
    meta = json.loads(recon_metadata(both, len(calib))["reconstruction"])
    assert meta["method"] == "gptq+adaround+brecq-blocks" and meta["config"]["method"] == "gptq+brecq"


# --- which inputs each layer is solved on (GPTQ_INPUTS) -----------------------------------------
def test_float_target_is_the_least_squares_fit_to_the_float_output():
    from mixquant_core.recon.gptq import float_target

    g = torch.Generator().manual_seed(0)
    w, a = torch.randn(3, 5, 7, generator=g), torch.randn(3, 7, 400, generator=g)
    b = a + 0.3 * torch.randn(a.shape, generator=g)  # the inputs the quantized model gives the layer
    fit = float_target(w, b @ b.transpose(1, 2), a @ b.transpose(1, 2), damp=1e-9)
    best = torch.linalg.lstsq(b.transpose(1, 2).double(), (w @ a).transpose(1, 2).double()).solution.transpose(1, 2)
    assert torch.allclose(fit.double(), best, atol=1e-4)
    same = float_target(w, a @ a.transpose(1, 2), a @ a.transpose(1, 2), damp=1e-9)
    assert torch.allclose(same, w, atol=1e-4)  # unchanged inputs: nothing to correct
    dead = torch.zeros(3, 7, 7, dtype=torch.float64)  # a layer whose inputs are all zero keeps its weights
    assert torch.equal(float_target(w, dead, dead), w)


def test_paired_grams_of_the_same_run_are_the_hessian():
    from mixquant_core.models.layer_inputs import paired_grams

    model = tiny_chain()
    x = images(6)
    for name in ("1.0", "1.2", "3"):  # depthwise, pointwise, Linear
        coll = LayerInputs(weight_ref(model, name))
        with coll, torch.no_grad():
            model(x)
        gram, cross, samples = paired_grams(model, name, model, model, [(x[:4], x[:4]), (x[4:], x[4:])])
        assert torch.allclose(gram, coll.matrices(name)) and torch.allclose(cross, gram)
        assert samples == coll.hessians[0].count


@pytest.mark.parametrize("inputs", ["stage", "layer", "float-target"])
def test_every_gptq_input_mode_keeps_plan_bits_and_leaves_the_model(inputs):
    model = tiny_chain()
    bits = dict(zip(layer_names(model), MIXED_BITS))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = reconstruct(model, bits, images(16), ReconConfig(method="gptq", batch_size=4, gptq_inputs=inputs))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(result.layers[n].nbits == b for n, b in bits.items())
    assert all(torch.isfinite(q.weight()).all() for q in result.layers.values())


def _logits_error(model: nn.Module, layers, x: torch.Tensor) -> float:
    import copy

    q = copy.deepcopy(model)
    with torch.no_grad():
        for n, layer in layers.items():
            weight_ref(q, n).tensor.copy_(layer.weight())
        return float((q(x) - model(x)).pow(2).mean())


def test_fitting_the_float_output_corrects_earlier_layers_error():
    """float-target's codes also undo the error the quantized layers before left in their inputs:
    the chain's logits move less from float32 (on held-out images) than with the other modes."""
    model = tiny_chain(width=16)
    bits = {n: 3 for n in layer_names(model)}
    calib, held_out = images(64, seed=1), images(32, seed=2)
    errors = {mode: _logits_error(model, reconstruct(model, bits, calib, ReconConfig(
        method="gptq", batch_size=16, gptq_inputs=mode, scheme="per-channel")).layers, held_out)
        for mode in ("stage", "float-target")}
    assert errors["float-target"] < 0.8 * errors["stage"], errors


def test_float_target_on_a_vision_transformer_with_packed_attention():
    from torchvision.models.vision_transformer import VisionTransformer

    from mixquant_core.models.layers import find_layers

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=10).eval()
    nn.init.normal_(model.heads.head.weight)  # torchvision starts it at zero: logits would not move
    bits = {layer.name: 3 for layer in find_layers(model)}
    x = torch.randn(12, 3, 32, 32)
    result = reconstruct(model, bits, x, ReconConfig(method="gptq", scheme="per-channel", gptq_inputs="float-target"))
    assert set(result.layers) == set(bits)
    assert all(torch.isfinite(q.weight()).all() for q in result.layers.values())
    stage = reconstruct(model, bits, x, ReconConfig(method="gptq", scheme="per-channel", gptq_inputs="stage"))
    assert _logits_error(model, result.layers, x) < _logits_error(model, stage.layers, x)


def test_unknown_gptq_inputs_is_one_line():
    with pytest.raises(MixQuantError, match="GPTQ inputs must be one of stage, layer, float-target"):
        reconstruct(tiny_chain(), {"3": 4}, images(2), ReconConfig(method="gptq", gptq_inputs="floats"))


# --- the grid of each output channel (GPTQ_GRIDS) ------------------------------------------------
def _channel_errors(q, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    d = (w.detach() - q.weight()).double().reshape(h.shape[0], -1, h.shape[-1])
    return (torch.bmm(d, h.double()) * d).sum(-1).reshape(-1)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), bits=st.integers(2, 4), scheme=st.sampled_from(["per-channel", "per-channel-mse"]))
def test_best_grid_keeps_each_channels_least_error(seed, bits, scheme):
    from mixquant_core.recon.gptq import best_grid_layer, best_grid_candidates

    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(24, 12)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(12, 24, generator=g) * torch.rand(12, 1, generator=g))
        lin.weight[:, 0] *= 6  # outliers, so that clipped and unclipped grids differ
    x = torch.randn(96, 24, generator=g) @ torch.randn(24, 24, generator=g)
    h = _hessian(lin, x)
    grids = best_grid_candidates(scheme, "fc", lin.weight.detach(), bits)
    assert len(grids) == 2  # the scheme's own grid, then the other of min/max and MSE (the duplicate dropped)
    best, start = best_grid_layer("fc", lin.weight, h, bits, scheme, 0.01, True, grids)
    each = torch.stack([_channel_errors(gptq_layer("fc", lin.weight, h, bits, scheme, grid=gr)[0], lin.weight, h)
                        for gr in grids])
    assert torch.allclose(_channel_errors(best, lin.weight, h), each.min(0).values, rtol=1e-5, atol=1e-9)
    assert int(best.codes.max()) <= 2 ** bits - 1 and best.scale.shape == (12, 1)
    inside = (best.codes > 0) & (best.codes < 2 ** bits - 1)  # gptq+brecq's start rounds to the codes
    assert torch.allclose(((start / best.scale).round() + best.zero_point)[inside], best.codes.float()[inside])


def test_best_grid_of_a_per_tensor_scheme_is_one_grid_for_the_layer():
    from mixquant_core.recon.gptq import best_grid_layer, best_grid_candidates

    torch.manual_seed(3)
    lin = nn.Linear(16, 8)
    h = _hessian(lin, torch.randn(64, 16))
    grids = best_grid_candidates("asymmetric", "fc", lin.weight.detach(), 2)
    best, _ = best_grid_layer("fc", lin.weight, h, 2, "asymmetric", 0.01, True, grids)
    assert best.scale.numel() == 1 and any(torch.equal(best.scale, gr[1]) for gr in grids)
    totals = [float(_channel_errors(gptq_layer("fc", lin.weight, h, 2, "asymmetric", grid=gr)[0], lin.weight, h).sum())
              for gr in grids]
    assert float(_channel_errors(best, lin.weight, h).sum()) == pytest.approx(min(totals), rel=1e-6)


def test_best_grid_lowers_the_chain_error_and_gptq_brecq_keeps_the_plan_grid():
    model = tiny_chain(width=16)
    bits = {n: 2 for n in layer_names(model)}
    calib, held_out = images(64, seed=1), images(32, seed=2)
    errors = {grid: _logits_error(model, reconstruct(model, bits, calib, ReconConfig(
        method="gptq", batch_size=16, scheme="per-channel", gptq_grid=grid)).layers, held_out)
        for grid in ("plan", "best")}
    assert errors["best"] < errors["plan"], errors
    both = reconstruct(model, bits, images(8), ReconConfig(method="gptq+brecq", iters=1, batch_size=4))
    assert both.config.gptq_grid == "plan"  # AdaRound's grid is the plan's: its start must be on it
    with pytest.raises(MixQuantError, match="GPTQ grid must be one of best, plan"):
        reconstruct(model, bits, images(2), ReconConfig(method="gptq", gptq_grid="widest"))
