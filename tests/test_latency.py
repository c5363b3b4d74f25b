"""Latency as a measured axis (issue #20, part 4): the core measurement on both runtimes, the
limited child that times untrusted files, `mixquant bench` (file and --plan), the missing-OpenVINO
notice, hostile files refused in one line, and `sweep --latency`. Behaviour, never timings: the
numbers only have to be positive and to sit where they belong."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixquant_cli.main import main
from mixquant_core.errors import MixQuantError
from mixquant_core.evaluation.latency import RUNTIMES, Latency, measure
from mixquant_core.export.onnx import onnx_bytes
from mixquant_core.models.onnx_graph import float_onnx_bytes
from mixquant_core.models.preprocess import Preprocess
from mixquant_core.studies.latency import FILE, FLOAT32, bench_bytes
from recon_support import tiny_chain, workspace

REPO = Path(__file__).resolve().parents[1]
SHAPE = (3, 24, 24)
BITS = [5, 3, 4, 4, 6]  # no 2-bit layer: OpenVINO reads int4/uint4 and int8/uint8 codes, not uint2
CHEAP = ["--runs", "2", "--batch", "2", "--no-progress"]


@pytest.fixture(scope="module")
def tiny():
    model = tiny_chain()
    data = onnx_bytes(model, workspace(model).plan_from_bits(BITS), Preprocess(resize=32, crop=24))
    return model, data


@pytest.fixture(scope="module")
def tiny_file(tiny, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "tiny.onnx"
    path.write_bytes(tiny[1])
    return path


def _one_line_refusal(code, err, *words):
    assert code == 2, err
    assert err.startswith("mixquant: error:") and err.strip().count("\n") == 0 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_measure_gives_positive_numbers_on_each_runtime(tiny, runtime):
    lat = measure(tiny[1], runtime, SHAPE, runs=3, batch=4, threads=1, warmup=1, model="file")
    assert isinstance(lat, Latency) and lat.runtime == runtime and lat.precision == "f32"
    assert lat.ms_per_image > 0 and lat.spread[0] <= lat.ms_per_image <= lat.spread[1]
    assert lat.images_per_second > 0 and (lat.runs, lat.threads, lat.batch) == (3, 1, 4)
    assert Latency.from_dict(json.loads(json.dumps(lat.to_dict()))) == lat
    only_one = measure(tiny[1], runtime, SHAPE, runs=2, batch=None, threads=1, warmup=0)
    assert only_one.images_per_second is None and only_one.ms_per_image > 0


def test_the_child_times_file_and_float32_on_both_runtimes(tiny):
    model, data = tiny
    result = bench_bytes(data, float_onnx_bytes(model, SHAPE), SHAPE, "tiny", "tiny_chain", RUNTIMES, runs=2, batch=2)
    assert [(r.runtime, r.model) for r in result.latencies] == [(rt, m) for rt in RUNTIMES for m in (FLOAT32, FILE)]
    assert not result.notices
    for r in result.latencies:
        assert r.ms_per_image > 0 and r.images_per_second > 0
        ratios = result.ratios(r)
        assert ratios["speedup_batch1"] > 0 and ratios["speedup_batch"] > 0
        if r.model == FLOAT32:
            assert ratios["speedup_batch1"] == 1.0
    assert len(result.table()) == 4 and "x float32 (batch 1)" in result.table()[0]


def test_a_bit_packed_2_bit_file_runs_in_both_runtimes(tiny):
    # 2-bit codes behind DequantizeLinear (uint2) were unreadable to OpenVINO 2026.4; the bit-packed
    # layout (export/onnx_pack.py) unpacks them with standard ops that both runtimes fold.
    model = tiny[0]
    two_bit = onnx_bytes(model, workspace(model).plan_from_bits([2, 2, 2, 2, 2]), Preprocess(resize=32, crop=24))
    result = bench_bytes(two_bit, None, SHAPE, "two-bit", "tiny_chain", RUNTIMES, runs=1, batch=1)
    assert [(r.runtime, r.model) for r in result.latencies] == [("onnxruntime", FILE), ("openvino", FILE)]
    assert not result.notices


def test_bench_file_prints_both_runtimes(capsys, tiny_file):
    code = main(["bench", str(tiny_file), *CHEAP])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["runtime", "model", "precision"]
    rows = [line.split() for line in lines[2:] if line.strip() and line.split()[0] in RUNTIMES]
    assert [(r[0], r[1]) for r in rows] == [("onnxruntime", "file"), ("openvino", "file")]
    assert all(float(r[3]) > 0 for r in rows)
    # a file model (no registry entry): no float32 reference, and it says so in one line
    assert "no float32 reference" in err and err.count("\n") == 1


@pytest.mark.slow
def test_bench_plan_json_has_float32_beside_the_plan(capsys, tmp_path):
    from mixquant_core.models.registry import build_model
    from mixquant_core.workspace import Workspace

    ws = Workspace(build_model("efficientnet_lite0"), bits=[8], device="cpu")
    plan_path = tmp_path / "u8.json"
    ws.plan_from_bits(ws.uniform(8)).save(plan_path)
    code = main(["bench", "--plan", str(plan_path), *CHEAP, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert data["model"] == "efficientnet_lite0" and data["notices"] == []
    got = {(r["runtime"], r["model"]): r for r in data["results"]}
    assert set(got) == {(rt, m) for rt in RUNTIMES for m in (FLOAT32, FILE)}
    for r in data["results"]:
        assert set(r) == {"runtime", "precision", "ms_per_image", "spread", "images_per_second", "runs", "threads",
                          "batch", "model", "speedup_batch1", "speedup_batch"}
        assert r["ms_per_image"] > 0 and r["images_per_second"] > 0 and r["batch"] == 2 and r["runs"] == 2
    assert got[("onnxruntime", FLOAT32)]["speedup_batch1"] == 1.0 and got[("openvino", FILE)]["speedup_batch1"] > 0


def test_missing_openvino_is_a_one_line_notice_and_onnxruntime_rows_stay(tiny_file):
    code = ("import sys; sys.modules['openvino'] = None\n"  # `import openvino` now raises ImportError
            "from mixquant_cli.main import main\n"
            f"sys.exit(main(['bench', {str(tiny_file)!r}, '--runs', '2', '--batch', '2', '--no-progress']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stderr
    notices = [line for line in done.stderr.splitlines() if "openvino" in line]
    assert notices == ["mixquant: note: openvino is not installed: its rows are left out (pip install openvino)"]
    rows = [line.split()[0] for line in done.stdout.splitlines() if line.split() and line.split()[0] in RUNTIMES]
    assert rows == ["onnxruntime"]


def test_hostile_and_bad_input_is_refused_in_one_line(capsys, tmp_path, tiny):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(tiny[1][: len(tiny[1]) // 2])
    code = main(["bench", str(truncated), *CHEAP])
    _one_line_refusal(code, capsys.readouterr().err, "not a readable ONNX file")
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(float_onnx_bytes(tiny[0], SHAPE))  # not a MixQuant export: nothing claims what it is
    _one_line_refusal(main(["bench", str(plain)]), capsys.readouterr().err, "not a MixQuant ONNX export")
    _one_line_refusal(main(["bench"]), capsys.readouterr().err, "an ONNX file or --plan")
    _one_line_refusal(main(["bench", str(tmp_path / "tiny.onnx"), "--runtime", "tensorrt"]), capsys.readouterr().err,
                      "--runtime takes onnxruntime and/or openvino")
    with pytest.raises(SystemExit) as exc:
        main(["bench", "x.onnx", "--runs", "0"])
    assert exc.value.code == 2 and "--runs" in capsys.readouterr().err


def test_a_slow_file_is_stopped_at_the_time_limit(tiny, monkeypatch):
    from test_hardening_onnx import _slow  # a valid graph of a few bytes that takes minutes an image

    from mixquant_core.studies.latency import bench_file

    monkeypatch.setenv("MIXQUANT_LOAD_TIMEOUT_S", "3")
    with pytest.raises(MixQuantError, match="took longer than 3 s .*MIXQUANT_LOAD_TIMEOUT_S"):
        bench_file(_slow(tiny[1], side=2048, chain=64), runtimes=["onnxruntime"], runs=1, batch=1)


@pytest.mark.slow
def test_sweep_latency_adds_a_column(capsys, val_dir):
    argv = ["sweep", "--data", str(val_dir), "--limit", "4", "--qems", "5", "--no-progress", "--no-store", "--latency"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert "size MB" in header and "latency ms" in header
    assert main(argv + ["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["method"] for r in rows] == ["float32", "int8", "mixquant"]
    assert all(r["latency_ms"] > 0 for r in rows)
    assert main(argv[:-1] + ["--json"]) == 0  # not asked for: not measured
    assert all(r["latency_ms"] is None for r in json.loads(capsys.readouterr().out)["rows"])


def test_a_file_past_the_memory_limit_is_stopped(tiny, monkeypatch):
    from test_hardening_onnx import _slow

    from mixquant_core.studies.latency import bench_file

    monkeypatch.setenv("MIXQUANT_LOAD_MEMORY_MB", "300")
    # 3 x 2048^2 floats an image (50 MB), twice: 600 MB at the throughput batch of 6
    with pytest.raises(MixQuantError, match="needed more than 300 MB .*MIXQUANT_LOAD_MEMORY_MB|stopped"):
        bench_file(_slow(tiny[1], side=2048, chain=1), runtimes=["onnxruntime"], runs=1, batch=6)


def test_report_shows_latency_only_when_measured(tiny):
    import torch

    from mixquant_core.data.image_sets import EvalTensors
    from mixquant_core.evaluations import Evaluations
    from mixquant_core.studies.latency import with_latency
    from mixquant_viz.report import report_html

    ws = workspace(tiny[0])
    data = EvalTensors(torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(0)), torch.arange(4))
    rows = Evaluations(ws).sweep(data, [5.0, 500.0])
    timed = with_latency(ws, rows, runs=2)
    assert all(r.latency_ms > 0 for r in timed) and [r.bits for r in timed] == [r.bits for r in rows]
    plain, measured = report_html(ws, data, rows), report_html(ws, data, timed)
    assert "Accuracy against latency" not in plain and "ms/image (ONNX Runtime, batch 1)" not in plain
    assert "Accuracy against latency" in measured and "ms/image (ONNX Runtime, batch 1)" in measured


@pytest.mark.slow
def test_sweep_compare_latency_adds_the_column(capsys, val_dir):
    argv = ["sweep", "--compare", "--data", str(val_dir), "--limit", "4", "--targets", "5", "--methods", "uniform,budget-qe",
            "--no-progress", "--no-store", "--latency"]
    assert main(argv) == 0
    assert "latency ms" in capsys.readouterr().out.splitlines()[0]
    assert main(argv + ["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows[0]["method"] == "float32" and all(r["latency_ms"] > 0 for r in rows)
