"""End to end on real weights and real images: EfficientNet-Lite0 on imagenet-val-1300."""
import json

import pytest

from mixquant_cli.main import main
from mixquant_core.data.image_sets import open_image_folder
from mixquant_core.data.load import load_tensors
from mixquant_core.evaluations import Evaluations
from mixquant_core.workspace import Workspace

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def lite0_200(lite0, val_dir):
    images = open_image_folder(val_dir).subset(200)
    return Evaluations(Workspace(lite0, device="cpu")), load_tensors(images, lite0.preprocess)


def test_lite0_float32_and_int8_on_200_images(lite0_200):
    ws, data = lite0_200
    assert len(data) == 200 and not data.skipped
    f32 = ws.evaluate_bits(None, data)
    int8 = ws.evaluate_bits(ws.ws.uniform(8), data)
    assert f32.top1 > 75.0
    assert abs(int8.top1 - f32.top1) <= 1.0
    assert f32.top5 >= f32.top1


def test_sweep_evaluates_each_distinct_plan_once(lite0_200):
    ws, data = lite0_200
    calls = []
    rows = ws.sweep(data, [1.0, 1.5, 20, 25, 1e5], progress=lambda d, t, w: calls.append(t))
    assert [r.method for r in rows] == ["float32", "int8"] + ["mixquant"] * 5
    distinct = {tuple(b) for b in ws.ws.bits_for([1.0, 1.5, 20, 25, 1e5])} | {tuple(ws.ws.uniform(8))}
    assert ws.tally.distinct == len(distinct) + 1  # + float32
    assert rows[2].top1 == rows[1].top1  # QEM 1 keeps every layer at 8 bits: same plan, same numbers
    assert rows[-1].avg_bits < rows[3].avg_bits and rows[-1].size_mb < rows[1].size_mb
    assert rows[-1].top1 < 5.0  # everything at 2 bits destroys the model


def test_cli_evaluate_json(capsys, val_dir, tmp_path):
    assert main(["evaluate", "--int8", "--data", str(val_dir), "--limit", "20", "--json", "--no-progress", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"top1", "top5", "loss", "images", "top1_ci", "top5_ci", "vs_float32"} <= set(out) and out["images"] == 20
    assert 0 <= out["top1"] <= out["top5"] <= 100
    low, high = out["top1_ci"]
    assert low <= out["top1"] <= high  # the Wilson interval holds the measured top-1
    assert set(out["vs_float32"]) >= {"delta_top1", "delta_ci", "p_value"}


def test_cli_sweep_table_and_csv(capsys, val_dir, tmp_path):
    csv_path = tmp_path / "table.csv"
    assert main(["sweep", "--data", str(val_dir), "--limit", "16", "--qems", "5,300", "--out", str(csv_path),
                 "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "float32" in out and "int8" in out and "distinct plans (float32 included)" in out
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("method,qem,bit_set,top1,top5,loss,quant_mse,avg_bits,size_mb,compression")
    assert len(lines) == 1 + 4
