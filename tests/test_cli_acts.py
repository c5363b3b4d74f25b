"""`--act-bits` end to end (issue #20): a W+A plan file carries every layer's calibrated input range,
`evaluate --plan` uses it, and bad activation input is one line, exit 2."""
import json

import pytest

from mixquant_cli.main import main
from mixquant_core.plans.plan import Plan


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exc:  # refused by the parser
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def calib_dir(data_root):
    return str(data_root / "imagenet-calib-1000")


def test_search_writes_a_w8a8_plan_and_evaluate_reads_it(capsys, tmp_path, calib_dir, val_dir):
    path = tmp_path / "wa.json"
    code, out, err = run(capsys, "search", "--quantizer", "per-channel", "--max-avg-bits", "6", "--act-bits", "8",
                         "--act-range", "minmax", "--act-keep-float", "_fc", "--calib", calib_dir, "--calib-images", "4",
                         "--out", str(path), "--no-progress")
    assert code == 0, err
    data = json.loads(path.read_text())
    acts = data["recipe"]["acts"]
    assert data["version"] == 2 and acts["bits"] == 8 and acts["method"] == "minmax"
    assert acts["calibration"]["images"] == 4 and acts["calibration"]["keep_float"] == ["_fc"]
    assert set(acts["ranges"]) == set(data["layers"]) - {"_fc"}  # every other layer's input range
    assert all(lo <= 0 <= hi or lo <= hi for lo, hi in acts["ranges"].values())
    code, out, err = run(capsys, "evaluate", "--plan", str(path), "--data", str(val_dir), "--limit", "8",
                         "--engine", "torch", "--no-store", "--json", "--no-progress")
    assert code == 0, err
    assert json.loads(out)["images"] == 8
    # the same plan without its ranges is one line, before any evaluation
    del data["recipe"]["acts"]["ranges"]["_conv_stem"]
    path.write_text(json.dumps(data))
    code, out, err = run(capsys, "evaluate", "--plan", str(path), "--data", str(val_dir), "--limit", "8", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "'_conv_stem' has no calibrated input range" in err
    del data["recipe"]
    assert Plan.from_dict(data).recipe == "per-channel"  # weights only without a recipe


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--int8", "--act-bits", "4"], "--act-bits must be one of 8"),
    (["evaluate", "--int8", "--act-bits", "8", "--act-range", "best"], "invalid choice: 'best'"),
    (["search", "--qem", "2", "--act-bits", "8", "--act-keep-float", "nowhere", "--calib-images", "2"],
     "'nowhere', which is not a quantizable layer"),
])
def test_bad_activation_options_are_one_line(capsys, argv, message, data_root):
    code, out, err = run(capsys, *argv, "--no-progress")
    assert code == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err


def test_act_bits_without_calibration_images_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("MIXQUANT_DATA", raising=False)
    code, out, err = run(capsys, "search", "--qem", "2", "--act-bits", "8", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "--act-bits needs calibration images" in err
