"""Sensitivity of activations (issue #20): one row per layer input, its figure, and the CLI's JSON."""
import json

import pytest
import torch

from mixquant_core.errors import MixQuantError
from mixquant_core.evaluations import Evaluations
from mixquant_core.quant.activations import ActQuant
from mixquant_core.studies.act_sensitivity import act_sensitivity
from mixquant_viz import figures

from test_act_calibration import Probe, _workspace, images


def test_one_row_per_layer_input_against_float32():
    torch.manual_seed(3)
    model = Probe().eval()
    with torch.no_grad():
        model.a.bias.fill_(0.5)  # layer b's input is not all zero
    calib, data = images(torch.rand(6, 1, 3, 3)), images(torch.rand(12, 1, 3, 3))
    data.labels[:] = torch.arange(12) % 3
    ws = _workspace(model, act_bits=8, act_range="minmax", calib=calib, act_keep_float=["c"])
    ev = Evaluations(ws)
    rows = act_sensitivity(ev, data)
    assert [r.name for r in rows] == ["a", "b"]  # c is kept float: no row
    ref = ev.evaluate_bits(None, data)
    for r in rows:
        assert (r.lo, r.hi) == ws.recipe.acts.ranges[r.name]
        assert r.top1_drop == pytest.approx(ref.top1 - r.top1) and r.loss_increase == pytest.approx(r.loss - ref.loss)
    # a range that saturates layer b's input moves the loss far more than its calibrated one
    bad = ActQuant(8, "minmax", {"b": (0.0, 1e-3)})
    worse = act_sensitivity(ev, data, bad)
    assert len(worse) == 1 and abs(worse[0].loss_increase) > 10 * abs(rows[1].loss_increase)
    fig = figures.act_sensitivity_figure(rows)
    assert list(fig.data[0].x) == ["a", "b"] and list(fig.data[0].y) == [r.loss_increase for r in rows]
    with pytest.raises(MixQuantError, match="needs calibrated activation ranges"):
        act_sensitivity(Evaluations(_workspace(model)), data)


def test_cli_prints_the_rows_as_json(capsys, data_root, val_dir):
    from mixquant_cli.main import main

    code = main(["sensitivity", "--activations", "--exclude", "_blocks.*", "--calib", str(data_root / "imagenet-calib-1000"),
                 "--calib-images", "2", "--data", str(val_dir), "--limit", "4", "--engine", "torch", "--no-store",
                 "--json", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["_conv_stem", "_conv_head", "_fc"]
    assert set(rows[0]) == {"name", "kind", "lo", "hi", "top1", "top1_drop", "loss", "loss_increase"}
