"""Plans and QE tables: finite numbers only, deep JSON refused, uncovered layers announced."""
from __future__ import annotations

import json

import pytest
import torch

from mixquant_cli.main import main
from mixquant_core.errors import InvalidWeightsError, PlanError
from mixquant_core.plans.plan import Plan
from mixquant_core.quant.qe import qe_table
from recon_support import MIXED_BITS, tiny_chain, workspace


def _plan_dict():
    return json.loads(workspace(tiny_chain()).plan_from_bits(MIXED_BITS).to_json())


@pytest.mark.parametrize("qem", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_qem_refused(qem):
    text = json.dumps(_plan_dict()).replace('"qem": null', f'"qem": {qem}')
    with pytest.raises(PlanError, match=qem.lstrip("-")):
        Plan.from_json(text)
    data = _plan_dict()
    data["qem"] = float(qem.replace("Infinity", "inf"))
    with pytest.raises(PlanError, match="qem"):
        Plan.from_dict(data)


def test_deeply_nested_json_is_one_line(tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(PlanError, match="nests too deeply"):
        Plan.load(deep)
    assert main(["evaluate", "--plan", str(deep), "--data", str(tmp_path)]) == 2
    assert "nests too deeply" in capsys.readouterr().err


def test_huge_finite_weights_give_an_error_naming_the_layer():
    model = tiny_chain()
    with torch.no_grad():
        layer = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][1]
        layer.weight.fill_(1e30)
        layer.weight[0, 0, 0, 0] = -3e38
    with pytest.raises(InvalidWeightsError, match=r"layer '.*': its quantization error is not finite"):
        qe_table(model, bits=(8, 4))


def test_plan_missing_a_layer_gets_a_notice_and_a_recomputed_size(tmp_path, capsys):
    full = tmp_path / "full.json"
    assert main(["search", "--qem", "50", "--out", str(full), "--no-progress", "--bits", "8,4"]) == 0
    data = json.loads(full.read_text())
    dropped = list(data["layers"])[:3]
    for name in dropped:
        del data["layers"][name]
    data["size"] = {"plan_mb": 0.0001, "avg_bits": 1.0}  # lies: recomputed, never carried through
    part = tmp_path / "part.json"
    part.write_text(json.dumps(data))
    plan = Plan.load(part)
    from mixquant_core.models.registry import build_model

    assert plan.fit(build_model("efficientnet_lite0").model) == 3
    assert plan.size["plan_mb"] > 1 and plan.size["avg_bits"] > 4
    capsys.readouterr()
    out = tmp_path / "q.safetensors"
    assert main(["export", "--plan", str(part), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "does not cover 3 quantizable layer(s): they stay float32" in err and err.count("\n") == 1


def test_sweep_steps_bounded(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--data", "x", "--steps", "100000000"])
    assert exc.value.code == 2 and "--steps: must be between 1 and 10000" in capsys.readouterr().err


def test_long_names_are_cut_in_error_lines(tmp_path, capsys):
    data = _plan_dict()
    data["layers"] = {"x" * 20_000_000: {"bits": 4}}
    path = tmp_path / "long.json"
    path.write_text(json.dumps(data))
    assert main(["evaluate", "--plan", str(path), "--data", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 1000
