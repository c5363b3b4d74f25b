"""The `mixquant` CLI: JSON contracts, plans on disk, one-line errors."""
import json
import re
import subprocess
import sys

import pytest

from mixquant_cli.main import main
from mixquant_core.plans.plan import Plan


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_json(capsys):
    code, out, _ = run(capsys, "models", "--filter", "efficientnet_lite*", "--source", "builtin", "--json")
    assert code == 0
    assert [m["name"] for m in json.loads(out)] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def test_qe_json_contract(capsys):
    code, out, _ = run(capsys, "qe", "--json", "--no-progress", "--device", "cpu")
    assert code == 0
    data = json.loads(out)
    assert data["model"] == "efficientnet_lite0" and data["quantizer"] == "asymmetric"
    assert data["bits"] == [8, 7, 6, 5, 4, 3, 2]
    assert len(data["layers"]) == 50
    first = data["layers"][0]
    assert set(first) == {"name", "kind", "params", "qe"} and first["name"] == "_conv_stem"
    assert list(first["qe"]) == ["8", "7", "6", "5", "4", "3", "2"]
    assert first["qe"]["2"] > first["qe"]["8"] > 0


def test_search_writes_loadable_plan(capsys, tmp_path):
    out_path = tmp_path / "plan.json"
    code, out, _ = run(capsys, "search", "--qem", "300", "--keep-first-last", "--out", str(out_path), "--no-progress")
    assert code == 0 and "wrote" in out
    plan = Plan.load(out_path)
    bits = list(plan.bits.values())
    assert plan.qem == 300 and bits[0] == 8 and bits[-1] == 8 and min(bits) < 8
    # a budget picks the QEM for the user and respects it
    code, out, _ = run(capsys, "search", "--max-avg-bits", "5.5", "--no-progress")
    assert code == 0 and json.loads(out)["size"]["avg_bits"] <= 5.5


def test_mse_quantizer_plan_export_load(capsys, tmp_path):
    # an MSE-clipped quantizer through search, the plan file, export and load
    plan_path, file_path = tmp_path / "plan.json", tmp_path / "q.safetensors"
    code, out, _ = run(capsys, "search", "--quantizer", "per-channel-mse", "--max-avg-bits", "5", "--out", str(plan_path),
                       "--no-progress")
    assert code == 0
    plan = Plan.load(plan_path)
    assert plan.quantizer == "per-channel-mse" and plan.size["avg_bits"] <= 5
    code, _, _ = run(capsys, "export", "--plan", str(plan_path), "--out", str(file_path), "--no-progress")
    assert code == 0
    code, out, _ = run(capsys, "load", str(file_path), "--json", "--no-progress")
    assert code == 0 and json.loads(out)["scheme"] == "per-channel-mse"


@pytest.mark.parametrize("argv, message", [
    (["search", "--qem", "0.5", "--no-progress"], "--qem: must be between 1 and"),
    (["qe", "--model", "not_a_model", "--no-progress"], "unknown model 'not_a_model'"),
    (["qe", "--bits", "8,9", "--no-progress"], "bit-widths must be from 2 to 8"),
    (["evaluate", "--data", "/nonexistent/folder", "--no-progress"], "evaluation folder '/nonexistent/folder' does not exist"),
    (["evaluate", "--plan", "/nonexistent/plan.json", "--data", ".", "--no-progress"], "cannot read plan file"),
])
def test_bad_input_one_line(capsys, argv, message):
    try:
        code, out, err = run(capsys, *argv)
    except SystemExit as exc:  # refused by the parser (exit 2), before the command ran
        code, err = exc.code, capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_corrupt_checkpoint_subprocess_no_traceback(tmp_path):
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"\x00garbage" * 100)
    proc = subprocess.run([sys.executable, "-m", "mixquant_cli", "qe", "--model", str(bad), "--arch", "resnet18"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not a PyTorch checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plan_for_another_model_rejected_by_evaluate(capsys, tmp_path, val_dir):
    from mixquant_core.models.registry import build_model
    from mixquant_core.workspace import Workspace

    plan = Workspace(build_model("resnet18", pretrained=False)).plan(10)
    path = tmp_path / "resnet_plan.json"
    plan.save(path)
    code, _, err = run(capsys, "evaluate", "--plan", str(path), "--data", str(val_dir), "--limit", "4", "--no-progress")
    assert code == 2 and "plan is for another model (resnet18)" in err


@pytest.mark.parametrize("argv", [["evaluate", "--no-progress"], ["report", "--out", "r.html", "--no-progress"],
                                  ["sweep", "--compare", "--no-progress"]])
def test_no_data_and_no_default_is_one_line(capsys, monkeypatch, argv):
    monkeypatch.delenv("MIXQUANT_DATA", raising=False)
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and "pass --data DIR (or set MIXQUANT_DATA)" in err


def test_data_defaults_to_the_mixquant_data_set(capsys, monkeypatch, data_root, val_dir):
    monkeypatch.setenv("MIXQUANT_DATA", str(data_root))  # as the app does: its evaluation set
    code, out, err = run(capsys, "evaluate", "--limit", "4", "--json", "--device", "cpu", "--no-store")
    assert code == 0 and json.loads(out)["images"] == 4
    assert f"no --data: evaluating {val_dir}" in err


def test_load_prints_intervals_like_evaluate(capsys, tmp_path, val_dir):
    path = tmp_path / "u8.safetensors"
    assert run(capsys, "export", "--uniform", "8", "--out", str(path), "--no-progress")[0] == 0
    code, out, _ = run(capsys, "load", str(path), "--data", str(val_dir), "--limit", "4", "--no-progress")
    assert code == 0
    assert re.search(r"top-1 \d+\.\d\d \[\d+\.\d, \d+\.\d\] %  top-5 \d+\.\d\d \[\d+\.\d, \d+\.\d\] %  loss \d", out), out
    code, out, _ = run(capsys, "load", str(path), "--data", str(val_dir), "--limit", "4", "--no-progress", "--json")
    data = json.loads(out)
    assert data["top1_ci"][0] <= data["top1"] <= data["top1_ci"][1] and data["images"] == 4


def test_load_keeps_its_results_in_the_store_keyed_by_the_files_content(capsys, tmp_path, val_dir):
    """`load` takes --store/--no-store like evaluate: a second load of the same file reads the store;
    another file of the same plan (other content) never shares its row."""
    store = str(tmp_path / "r.sqlite")
    u8, u4 = tmp_path / "u8.safetensors", tmp_path / "u4.safetensors"
    for bits, path in ((8, u8), (4, u4)):
        assert run(capsys, "export", "--uniform", str(bits), "--out", str(path), "--no-progress")[0] == 0
    argv = ["--data", str(val_dir), "--limit", "4", "--no-progress", "--json", "--store", store]
    first = json.loads(run(capsys, "load", str(u8), *argv)[1])
    again = json.loads(run(capsys, "load", str(u8), *argv)[1])
    other = json.loads(run(capsys, "load", str(u4), *argv)[1])
    off = json.loads(run(capsys, "load", str(u8), *argv, "--no-store")[1])
    assert (first["from_store"], again["from_store"], other["from_store"], off["from_store"]) == (0, 1, 0, 0)
    assert again["top1"] == first["top1"] == off["top1"] and again["loss"] == first["loss"]
