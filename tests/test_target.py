"""The accuracy target (studies/target.py): bisection over a family's plans, each evaluated once."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mixquant_core.data.image_sets import EvalTensors
from mixquant_core.errors import MixQuantError
from mixquant_core.models.preprocess import Preprocess
from mixquant_core.models.registry import LoadedModel, fingerprint
from mixquant_core.studies.target import family_plans, smallest_within_drop, target_plan
from mixquant_core.evaluations import Evaluations
from mixquant_core.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_setup(tiny_model):
    loaded = LoadedModel(tiny_model, "tiny", "file", Preprocess(resize=8, crop=8), fingerprint(tiny_model))
    ws = Workspace(loaded, bits=(8, 6, 4, 3, 2), device="cpu")
    g = torch.Generator().manual_seed(1)
    images = torch.randn(120, 3, 8, 8, generator=g)
    with torch.no_grad():
        labels = tiny_model(images).argmax(1)  # float32 is right on every image
    return ws, EvalTensors(images, labels)


@pytest.mark.parametrize("method", ["qem", "qe"])
@pytest.mark.parametrize("max_drop", [0.0, 5.0, 30.0])
def test_bisection_finds_a_boundary_and_evaluates_each_plan_once(tiny_setup, method, max_drop):
    ws, data = tiny_setup
    bits, _ = family_plans(ws, method)
    sizes = [ws.size(b).plan_mb for b in bits]
    assert sizes == sorted(sizes, reverse=True) and len({tuple(b) for b in bits}) == len(bits)
    ev = Evaluations(ws)
    result = smallest_within_drop(ev, data, max_drop, method)
    assert result.reference.top1 == 100.0
    assert result.evaluated == ev.tally.evaluated - 1 <= math.ceil(math.log2(len(bits) + 1))  # float32 + each plan once
    assert len({s.index for s in result.steps}) == result.evaluated
    passed = {s.index: s.passed for s in result.steps}
    if result.found:
        assert result.metrics.top1 >= 100.0 - max_drop - 1e-9 and passed[result.index]
        # the next smaller plan was evaluated and missed the target (or there is none)
        assert result.index == len(bits) - 1 or passed[result.index + 1] is False
        plan = target_plan(ws, result)
        assert plan.extra["accuracy_target"]["max_drop"] == max_drop
    else:
        assert passed[0] is False


def test_confident_mode_is_never_less_strict(tiny_setup):
    ws, data = tiny_setup
    plain = smallest_within_drop(Evaluations(ws), data, 10.0)
    sure = smallest_within_drop(Evaluations(ws), data, 10.0, confident=True)
    if sure.found:
        assert -sure.difference.ci[0] <= 10.0 + 1e-9
        assert plain.found and sure.size.plan_mb >= plain.size.plan_mb
    assert "95 % interval" in plain.certainty() or not plain.found


def test_bad_targets_are_refused(tiny_setup):
    ws, data = tiny_setup
    for bad in (-1.0, float("nan"), 101.0):
        with pytest.raises(MixQuantError, match="allowed top-1 drop"):
            smallest_within_drop(Evaluations(ws), data, bad)
    with pytest.raises(MixQuantError, match="unknown plan family"):
        smallest_within_drop(Evaluations(ws), data, 1.0, method="nope")


@pytest.mark.data
def test_cli_search_max_drop_on_lite0(val_dir, tmp_path):
    out = tmp_path / "plan.json"
    cmd = [sys.executable, "-m", "mixquant_cli", "search", "--max-drop", "3", "--data", str(val_dir), "--limit", "40",
           "--no-progress", "--json", "--out", str(out), "--store", str(tmp_path / "r.sqlite")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["found"] and report["drop"] <= 3.0 and report["candidates"] > 50
    assert report["evaluated"] <= math.ceil(math.log2(report["candidates"] + 1))
    assert json.loads(out.read_text())["extra"]["accuracy_target"]["evaluated"] == report["evaluated"]
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900)  # all from the store now
    assert json.loads(again.stdout)["from_store"] == report["evaluated"] + 1
    # no --data and no MIXQUANT_DATA (whose evaluation set is the default): one line naming --data
    no_env = {k: v for k, v in os.environ.items() if k != "MIXQUANT_DATA"}
    no_data = subprocess.run(cmd[:6] + ["--no-progress"], capture_output=True, text=True, cwd=REPO, timeout=300,
                             env=no_env)  # search --max-drop 3, nothing else
    assert no_data.returncode == 2 and "--data" in no_data.stderr and "Traceback" not in no_data.stderr
    assert no_data.stderr.count("\n") == 1 and "expected one argument" not in no_data.stderr
