"""Loss-aware weight ranges (issue #22): the Fisher-weighted clipping search against a brute-force
loop, its fallbacks, the output-error score against a direct computation, and the wiring (Workspace
tables, plans, both evaluation engines, export, CLI)."""
import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TinyNet
from test_evaluate import tiny_set
from mixquant_cli.main import main
from mixquant_core.errors import MixQuantError
from mixquant_core.evaluation.evaluate import per_image
from mixquant_core.evaluations import Evaluations
from mixquant_core.export.packed import rtn_layers
from mixquant_core.models.layers import layer_weight
from mixquant_core.models.preprocess import Preprocess
from mixquant_core.models.registry import LoadedModel, fingerprint
from mixquant_core.plans.fisher import fisher_diagonal
from mixquant_core.plans.plan import Plan
from mixquant_core.plans.ranges import layer_hessians, output_weight_ranges
from mixquant_core.quant import clip_search
from mixquant_core.quant.loss_ranges import fisher_ratios, output_ratios, output_scores
from mixquant_core.quant.quantizers import CLIP_RATIOS, as_rows, fake_quantize, fake_quantize_with_ratios
from mixquant_core.quant.recipe import Recipe
from mixquant_core.workspace import Workspace

SCHEMES = ["asymmetric", "symmetric", "per-channel"]


def weighted_errors(w, f, bits, scheme):
    """Brute force: [R, K] sum F * (w - q(w))^2 per grid row for every ratio, one quantizer call each."""
    per_channel = scheme == "per-channel"
    rows = as_rows(w, per_channel).shape[0]
    out = []
    for r in CLIP_RATIOS.tolist():
        err = w - fake_quantize_with_ratios(w, bits, scheme, torch.full((rows,), r))
        out.append((as_rows(f.double() * (err * err).double(), per_channel)).sum(1))  # squared in float32, as the kernel
    return torch.stack(out, 1)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 30), st.sampled_from(SCHEMES), st.integers(2, 8), st.integers(0, 10_000))
def test_search_equals_a_brute_force_loop(rows, cols, scheme, bits, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g)
    w[0, 0] = 6.0  # an outlier to clip
    f = torch.rand(rows, cols, generator=g, dtype=torch.float64) ** 4
    ratios, err = fisher_ratios(w, f, bits, scheme)
    brute = weighted_errors(w, f, bits, scheme)
    k = (CLIP_RATIOS[None, :] == ratios[:, None]).float().argmax(1)
    chosen = brute.gather(1, k[:, None])[:, 0]
    best = brute.min(1).values
    assert torch.all(chosen <= best * (1 + 1e-9) + 1e-300)  # the least weighted error (up to summation order)
    torch.testing.assert_close(err, chosen, rtol=1e-9, atol=1e-300)
    assert torch.all(chosen <= brute[:, 0] * (1 + 1e-9))  # never worse than min/max (ratio 1)
    # and ties keep the larger range: no larger ratio reaches the chosen error
    for r in range(len(k)):
        assert torch.all(brute[r, : k[r]] > chosen[r] * (1 - 1e-9) - 1e-300) or k[r] == 0


@pytest.mark.parametrize("seed", range(3))
def test_numba_and_torch_weighted_kernels_agree(seed):
    if not clip_search.HAVE_NUMBA:
        pytest.skip("numba not installed")
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(7, 300, generator=g)
    f = torch.rand(7, 300, generator=g, dtype=torch.float64)
    lo, hi = torch.aminmax(rows, dim=1)
    scale = ((hi - lo) / 15)[:, None] * CLIP_RATIOS[None, :]
    zp = torch.round(-lo[:, None] * CLIP_RATIOS[None, :] / scale).clamp(0, 15)
    a = clip_search.row_sq_errors(rows, scale, zp, 0, 15, weights=f)  # numba (large enough)
    b = clip_search._torch_errors(rows, scale, zp, 0.0, 15.0, f)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=0)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_uniform_fisher_gives_the_mse_range(scheme):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 40, generator=g)
    w[:, 0] *= 8
    ratios, _ = fisher_ratios(w, torch.ones_like(w, dtype=torch.float64), 3, scheme)
    torch.testing.assert_close(fake_quantize_with_ratios(w, 3, scheme, ratios), fake_quantize(w, 3, scheme + "-mse"))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_never_worse_than_min_max_or_mse_in_weighted_error(scheme):
    g = torch.Generator().manual_seed(5)
    w = torch.randn(8, 50, generator=g)
    w[:, :3] *= 10  # outliers ...
    f = torch.rand(8, 50, generator=g, dtype=torch.float64)
    f[:, :3] *= 1000  # ... that the loss feels: MSE clips them, the loss-aware range keeps them
    for bits in (2, 4):
        ratios, _ = fisher_ratios(w, f, bits, scheme)

        def cost(q):
            return float((f * (w - q).double() ** 2).sum())

        ours = cost(fake_quantize_with_ratios(w, bits, scheme, ratios))
        assert ours <= cost(fake_quantize(w, bits, scheme)) * (1 + 1e-9)
        assert ours <= cost(fake_quantize(w, bits, scheme + "-mse")) * (1 + 1e-9)
    assert cost(fake_quantize_with_ratios(w, 2, scheme, fisher_ratios(w, f, 2, scheme)[0])) < \
        cost(fake_quantize(w, 2, scheme + "-mse"))


def test_rows_the_loss_cannot_see_keep_the_mse_choice():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(4, 30, generator=g)
    w[:, 0] = 9.0
    f = torch.rand(4, 30, generator=g, dtype=torch.float64)
    f[1] = 0.0  # the loss does not feel row 1
    f[2, 5] = float("nan")  # a broken gradient in row 2
    f[3, 0] = float("inf")
    ratios, err = fisher_ratios(w, f, 2, "per-channel")
    assert torch.isfinite(ratios).all() and ((ratios > 0) & (ratios <= 1)).all()
    mse = fake_quantize(w, 2, "per-channel-mse")
    got = fake_quantize_with_ratios(w, 2, "per-channel", ratios)
    for r in (1, 2, 3):
        assert torch.equal(got[r], mse[r])
    zero, _ = fisher_ratios(w, torch.zeros_like(w, dtype=torch.float64), 2, "asymmetric")  # a layer of zero Fisher
    assert torch.equal(fake_quantize_with_ratios(w, 2, "asymmetric", zero), fake_quantize(w, 2, "asymmetric-mse"))


def tiny_ws(calib, ranges="loss", scheme="per-channel", engine="torch"):
    torch.manual_seed(0)
    model = TinyNet().eval()
    loaded = LoadedModel(model, "tinynet", "file", Preprocess(8, 6), fingerprint(model))
    return Workspace(loaded, scheme, device="cpu", engine=engine, ranges=ranges, calib=calib)


def test_output_error_score_equals_the_layer_output_error():
    torch.manual_seed(0)
    model = TinyNet().eval()
    data = tiny_set(1, 5)
    ws = tiny_ws(data, "weights")
    grams = layer_hessians(model, ws.layers, data, batch_size=2)
    inputs = {}
    hooks = [getattr(model, n).register_forward_pre_hook(lambda m, a, n=n: inputs.setdefault(n, []).append(a[0]))
             for n in ("dw", "pw", "fc", "stem")]
    with torch.no_grad():
        model(data.images)
    for h in hooks:
        h.remove()
    for name in ("stem", "dw", "pw", "fc"):
        i = [l.name for l in ws.layers].index(name)
        module = getattr(model, name)
        w = module.weight.detach()
        scores = output_scores(w, grams[i], 3, "per-channel", CLIP_RATIOS[[0, 20, 50]])
        x = torch.cat(inputs[name])
        for k, r in enumerate((CLIP_RATIOS[0], CLIP_RATIOS[20], CLIP_RATIOS[50])):
            e = w - fake_quantize_with_ratios(w, 3, "per-channel", torch.full((w.shape[0],), float(r)))
            if name == "fc":
                y = F.linear(x.double(), e.double())
                direct = (y ** 2).sum(0)
            else:
                y = F.conv2d(x.double(), e.double(), None, module.stride, module.padding, module.dilation, module.groups)
                direct = (y ** 2).sum((0, 2, 3))
            torch.testing.assert_close(scores[:, k], direct, rtol=1e-5, atol=1e-12)  # Gram summed in float32 per batch
    ranges = output_weight_ranges(model, ws.layers, data, (8, 2), "per-channel")
    assert set(ranges.ratios) == {(l.name, b) for l in ws.layers for b in (8, 2)}
    ratios, _ = output_ratios(torch.randn(4, 9), torch.zeros(1, 9, 9, dtype=torch.float64), 2, "per-channel")
    assert torch.equal(ratios, fisher_ratios(torch.randn(4, 9), torch.zeros(4, 9), 2, "per-channel")[0].new_tensor(
        ratios.tolist()))  # finite, usable


def test_workspace_tables_use_the_loss_aware_grid():
    calib = tiny_set(1, 6)
    ws = tiny_ws(calib)
    recipe = ws.recipe
    assert isinstance(recipe, Recipe) and recipe.weight_ranges.method == "output"
    assert recipe.weight_ranges.calibration["images"] == 6
    assert set(recipe.weight_ranges.ratios) == {(l.name, b) for l in ws.layers for b in ws.bits}
    model = ws.loaded.model
    diag = fisher_diagonal(copy.deepcopy(model), ws.layers, calib)
    table, fisher = ws.table(), ws.fisher(calib)
    hessians = layer_hessians(copy.deepcopy(model), ws.layers, calib)
    for i, layer in enumerate(ws.layers):
        w = layer_weight(model, layer.name).detach()
        for j, b in enumerate(ws.bits):
            q = fake_quantize_with_ratios(w, b, "per-channel", recipe.weight_ranges.ratios_for(layer.name, b))
            assert table.qe[i, j] == pytest.approx(float(((w - q) ** 2).mean()), rel=1e-6)
            assert fisher.cost[i, j] == pytest.approx(float((diag[i] * (w - q).double() ** 2).sum()), rel=1e-6)
            ours = output_scores(w, hessians[i], b, "per-channel", recipe.weight_ranges.ratios_for(layer.name, b)).diagonal()
            min_max = output_scores(w, hessians[i], b, "per-channel", torch.ones(1))[:, 0]
            assert (ours <= min_max * (1 + 1e-9)).all()  # per channel, never more output error than min/max
    assert np.isfinite(table.qe).all() and np.isfinite(fisher.cost).all()


def manual_metrics(model, plan_json, data):
    """Fake-quantize by hand with the ratios the plan JSON records, then evaluate."""
    model = copy.deepcopy(model)
    ratios = {(n, b): torch.tensor(r) for n, b, r in plan_json["recipe"]["weight_ranges"]["ratios"]}
    with torch.no_grad():
        for name, entry in plan_json["layers"].items():
            w = layer_weight(model, name)
            w.copy_(fake_quantize_with_ratios(w.detach(), entry["bits"], plan_json["quantizer"],
                                              ratios[(name, entry["bits"])]))
        hit1, hit5, loss = per_image(model(data.images), data.labels)
    return hit1.float().mean().item() * 100, hit5.float().mean().item() * 100, loss.mean().item()


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_plan_records_ratios_and_evaluation_and_export_use_them(engine, tmp_path):
    calib, data = tiny_set(1, 8), tiny_set(7, 40)
    ws = tiny_ws(calib, engine=engine)
    bits = ws.budget_bits("fisher", avg_bits=3.5, calib=calib)
    plan = ws.plan_from_bits(bits)
    plan.save(tmp_path / "plan.json")
    text = json.loads((tmp_path / "plan.json").read_text())
    recorded = {(n, b): r for n, b, r in text["recipe"]["weight_ranges"]["ratios"]}
    assert set(recorded) == {(n, e["bits"]) for n, e in text["layers"].items()}
    assert text["recipe"]["weight_ranges"]["calibration"]["images"] == 8
    assert any(r < 1 for ratios in recorded.values() for r in ratios)  # something was clipped
    loaded = Plan.load(tmp_path / "plan.json")
    m = Evaluations(ws).evaluate_plan(loaded, data)
    top1, top5, loss = manual_metrics(ws.loaded.model, text, data)
    assert m.top1 == pytest.approx(top1) and m.top5 == pytest.approx(top5) and m.loss == pytest.approx(loss, rel=1e-4)
    # export: the round-to-nearest codes sit on the recorded grids
    for name, q in rtn_layers(ws.loaded.model, loaded).items():
        w = layer_weight(ws.loaded.model, name).detach()
        b = loaded.bits[name]
        assert torch.allclose(q.weight(), fake_quantize_with_ratios(w, b, "per-channel", torch.tensor(recorded[(name, b)])),
                              atol=1e-7)


def test_one_image_and_broken_gradients():
    ws = tiny_ws(tiny_set(1, 1))  # one calibration image: ranges exist and are finite
    ratios = ws.recipe.weight_ranges.ratios
    assert all(0 < r <= 1 for rs in ratios.values() for r in rs)
    bad = tiny_set(1, 2)
    bad.images[0, 0, 0, 0] = float("nan")
    with pytest.raises(MixQuantError, match="NaN"):
        tiny_ws(bad).recipe
    with pytest.raises(MixQuantError, match="calibration"):
        tiny_ws(None).recipe
    with pytest.raises(MixQuantError, match="weights or loss"):
        tiny_ws(None, ranges="mse")


def test_cli_loss_ranges_without_calibration_is_one_line(capsys, monkeypatch):
    monkeypatch.delenv("MIXQUANT_DATA", raising=False)
    code = main(["allocate", "--avg-bits", "4", "--ranges", "loss", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "--ranges loss needs calibration images" in err


def test_app_sidebar_chooses_loss_aware_ranges(monkeypatch, tmp_path):
    from apptest_support import errors, new_app

    from studio_ui.settings import Settings

    monkeypatch.delenv("MIXQUANT_DATA", raising=False)
    at = new_app(ranges="loss")
    at.run()
    assert at.sidebar.radio(key="ranges").options == ["from the weights", "loss-aware (calibrated)"]
    assert any("loss-aware ranges and 8-bit activations need calibration images" in e for e in errors(at))  # one line, page stopped
    at.sidebar.radio(key="ranges").set_value("weights").run()
    assert not errors(at) and at.session_state["settings"].ranges == "weights"
    base = dict(model_source="registry", model_name="m", model_path=None, model_digest=None, arch=None,
                quantizer="per-channel", bits=(8, 4), keep_first_last=False, device="cpu", data_kind="folder",
                data_dir="", limit=None)
    assert Settings(**base).workspace_key != Settings(**base, ranges="loss", calib_dir="/c").workspace_key


def test_reconstruction_base_takes_the_plan_ratios(monkeypatch):
    import importlib

    from mixquant_core.recon.adaround import AdaRoundWeight

    recon = importlib.import_module("mixquant_core.recon.reconstruct")  # the module (the package exports the function)

    g = torch.Generator().manual_seed(4)
    w = torch.randn(5, 3, 3, 3, generator=g)
    ratios = torch.tensor([1.0, 0.9, 0.5, 0.7, 0.33])
    p = AdaRoundWeight(w, 3, "per-channel-mse", ratios)
    p.mode = "nearest"
    assert torch.allclose(p(w), fake_quantize_with_ratios(w, 3, "per-channel", ratios), atol=1e-6)
    # reconstruct_plan hands the plan's ranges to the base grid when the grids match
    ws = tiny_ws(tiny_set(1, 4))
    plan = ws.plan_from_bits(ws.uniform(4))
    seen = {}
    monkeypatch.setattr(recon, "reconstruct", lambda model, bits, calib, cfg, progress, ranges: seen.update(r=ranges)
                        or recon.ReconResult({name: None for name in bits}, config=cfg))
    recon.reconstruct_plan(ws.loaded.model, plan, torch.randn(2, 3, 6, 6), recon.ReconConfig(scheme="per-channel-mse"))
    assert seen["r"] is not None and seen["r"].ratios == plan.recipe.weight_ranges.ratios
    recon.reconstruct_plan(ws.loaded.model, plan, torch.randn(2, 3, 6, 6), recon.ReconConfig(scheme="asymmetric"))
    assert seen["r"] is None  # another grid: its own ranges
