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


def test_export_stores_full_range_int8_codes_exactly_unless_asked_for_signed(capsys, tmp_path, calib_dir):
    """Per-channel symmetric 8-bit codes reach +-127 in every channel: `export` stores them as uint8
    around 128 (no u8 x s8 kernel can saturate on them), `--int8-weights signed` as int8, as
    quantize_static does; both files read back with the same plan."""
    import onnx
    from onnx import TensorProto

    plan_path = tmp_path / "w8a8.json"
    code, _, err = run(capsys, "search", "--quantizer", "per-channel-symmetric", "--qem", "1", "--act-bits", "8",
                       "--calib", calib_dir, "--calib-images", "4", "--out", str(plan_path), "--no-progress")
    assert code == 0, err
    kinds = {}
    for choice in ("exact", "signed"):
        out = tmp_path / f"{choice}.onnx"
        argv = ["export", "--plan", str(plan_path), "--out", str(out), "--no-progress", "--json"]
        code, stdout, err = run(capsys, *(argv + ([] if choice == "exact" else ["--int8-weights", "signed"])))
        assert code == 0, err
        report = json.loads(stdout)
        assert report["integer_kernel_layers"] == 49
        if choice == "exact":
            assert report["saturable_layers"] == 0 and "saturate" not in err
        else:  # named in one notice line
            assert report["saturable_layers"] > 40 and err.count("\n") == 1 and "can saturate on CPUs without VNNI" in err
        graph = onnx.load(str(out)).graph
        kinds[choice] = {i.data_type for i in graph.initializer if i.name.endswith("_codes")}
        code, _, err = run(capsys, "load", str(out), "--no-progress")
        assert code == 0, err
    assert kinds == {"exact": {TensorProto.UINT8}, "signed": {TensorProto.INT8}}
