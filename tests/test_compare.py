"""The Pareto comparison: candidate plans per method, each distinct plan evaluated once, the front
marked, plans exportable; its figure; and the CLI (`allocate`, `sweep --compare`)."""
import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import TinyNet
from mixquant_cli.main import main
from mixquant_core.studies.compare import METHODS, candidates, compare, matched, pareto_mask, plan_for
from mixquant_core.data.image_sets import EvalTensors
from mixquant_core.errors import MixQuantError
from mixquant_core.models.registry import LoadedModel, fingerprint
from mixquant_core.plans.plan import Plan
from mixquant_viz.pareto import pareto_figure
from mixquant_core.models.preprocess import Preprocess
from mixquant_core.evaluations import PLAN_ROW_COLUMNS, Evaluations
from mixquant_core.workspace import Workspace


@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=12))
def test_front_is_exactly_the_points_nothing_dominates(points):
    size = np.array([p[0] for p in points], dtype=float)
    acc = np.array([p[1] for p in points], dtype=float)
    front = pareto_mask(size, acc)

    def dominates(j, i):
        return size[j] <= size[i] and acc[j] >= acc[i] and (size[j] < size[i] or acc[j] > acc[i])

    for i in range(len(points)):
        dominated = any(dominates(j, i) for j in range(len(points)))
        assert front[i] == (not dominated)
    # every point off the front is beaten by one on it
    for i in np.nonzero(~front)[0]:
        assert any(dominates(j, i) for j in np.nonzero(front)[0])


@pytest.fixture
def tiny_ws():
    torch.manual_seed(0)
    model = TinyNet().eval()
    return Workspace(LoadedModel(model, "tinynet", "file", Preprocess(8, 6), fingerprint(model)), device="cpu",
                     keep_first_last=True)


@pytest.fixture
def tiny_data():
    g = torch.Generator().manual_seed(1)
    return EvalTensors(torch.randn(12, 3, 6, 6, generator=g), torch.randint(0, 10, (12,), generator=g))


def test_compare_evaluates_each_distinct_plan_once_and_marks_the_front(tiny_ws, tiny_data, monkeypatch):
    calls = []
    engine = tiny_ws.evaluator.engine
    real = engine.evaluate
    monkeypatch.setattr(engine, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    targets = (7, 5, 4.5, 3)
    ev = Evaluations(tiny_ws)
    rows = compare(ev, tiny_data, targets, calib=tiny_data)
    distinct = {r.bits for r in rows}
    assert len(calls) == len(distinct) == ev.tally.distinct
    assert {r.method for r in rows} == {"float32", *METHODS}
    assert [r.target for r in rows if r.method == "uniform"] == [8, 7, 6, 5, 4, 3, 2]
    for r in rows:
        if r.method in ("mixquant", "budget-qe", "budget-fisher"):
            assert r.avg_bits <= r.target + 1e-9
        if r.bits is not None:
            assert r.bits[0] == r.bits[-1] == 8  # keep_first_last holds for every method
    flags = pareto_mask([r.size_mb for r in rows], [r.top1 for r in rows])
    assert [r.pareto for r in rows] == list(flags)
    by_target = matched(rows)
    assert [line["target"] for line in by_target] == [7, 5, 4.5, 3]
    assert by_target[0]["uniform"].bit_set == "7, 8" and "uniform" not in by_target[2]


def test_a_compared_point_exports_as_a_valid_plan(tiny_ws, tiny_data):
    rows = compare(Evaluations(tiny_ws), tiny_data, (5,), methods=("budget-qe",), include_float=True)
    row = next(r for r in rows if r.method == "budget-qe")
    plan = Plan.from_json(plan_for(tiny_ws, row).to_json())
    assert [plan.bits[l.name] for l in tiny_ws.layers] == list(row.bits)
    assert plan.extra["method"] == "budget-qe" and plan.extra["budget_avg_bits"] == 5
    assert plan.size["avg_bits"] == pytest.approx(row.avg_bits)
    plan.check_against(tiny_ws.loaded.model)
    with pytest.raises(MixQuantError, match="float32"):
        plan_for(tiny_ws, rows[0])


def test_bad_targets_and_methods_are_clear_errors(tiny_ws, tiny_data):
    with pytest.raises(MixQuantError, match="from 2 to 8"):
        candidates(tiny_ws, (9,))
    with pytest.raises(MixQuantError, match="unknown method"):
        candidates(tiny_ws, (5,), methods=("magic",))
    with pytest.raises(MixQuantError, match="calibration"):
        compare(Evaluations(tiny_ws), tiny_data, (5,), methods=("budget-fisher",))


def test_pareto_figure_has_a_trace_per_method_and_rings_the_front(tiny_ws, tiny_data):
    rows = compare(Evaluations(tiny_ws), tiny_data, (6, 4), calib=tiny_data)
    fig = pareto_figure(rows, selected=3)
    names = [t.name for t in fig.data]
    assert names[:4] == ["uniform bits", "MixQuant QEM rule", "budgeted, plain QE", "budgeted, Fisher-weighted"]
    front = next(t for t in fig.data if t.name == "Pareto front")
    on_front = [i for i, r in enumerate(rows) if r.pareto and r.bits is not None]
    assert sorted(c[0] for c in front.customdata) == on_front
    for trace in fig.data:  # every drawn point maps back to its row
        for x, y, custom in zip(trace.x, trace.y, trace.customdata):
            assert (rows[custom[0]].size_mb, rows[custom[0]].top1) == (x, y)
    assert next(t for t in fig.data if t.name == "selected").customdata[0][0] == 3
    assert any("float32" in a.text for a in fig.layout.annotations)
    uniform = fig.data[0]  # each point's 95 % interval as an error bar, from the row itself
    for y, up, custom in zip(uniform.y, uniform.error_y.array, uniform.customdata):
        assert y + up == pytest.approx(rows[custom[0]].top1_ci[1])
    assert all(r.vs_float32 is not None for r in rows if r.bits is not None)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_allocate_cli_writes_a_plan_within_the_budget(capsys, tmp_path):
    out = tmp_path / "plan.json"
    code, text, _ = run(capsys, "allocate", "--avg-bits", "4.5", "--keep-first-last", "--out", str(out),
                        "--no-progress", "--device", "cpu")
    assert code == 0 and "wrote" in text
    plan = Plan.load(out)
    bits = list(plan.bits.values())
    assert plan.size["avg_bits"] <= 4.5 and bits[0] == bits[-1] == 8 and len(set(bits)) > 2
    assert plan.extra["method"] == "budget-qe"
    code, text, _ = run(capsys, "allocate", "--max-mb", "3", "--json", "--no-progress", "--device", "cpu")
    assert code == 0 and json.loads(text)["size"]["plan_mb"] <= 3


@pytest.mark.parametrize("argv, message", [
    (["allocate", "--avg-bits", "1", "--no-progress"], "no plan fits that budget"),
    (["allocate", "--avg-bits", "5", "--cost", "fisher", "--calib", "/nonexistent/dir", "--no-progress"],
     "'/nonexistent/dir' does not exist"),
])
def test_allocate_cli_bad_input_one_line(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and message in err


@pytest.mark.data
def test_sweep_compare_cli_on_real_images(capsys, val_dir, data_root, tmp_path):
    code, text, err = run(capsys, "sweep", "--compare", "--data", str(val_dir), "--limit", "4", "--targets", "5,3",
                          "--methods", "mixquant,budget-fisher", "--calib", str(data_root / "imagenet-calib-1000"),
                          "--calib-images", "1", "--json", "--no-progress", "--device", "cpu",
                          "--out", str(tmp_path / "c.csv"))
    assert code == 0, err
    data = json.loads(text)
    assert data["images"] == 4 and data["calibration_images"] == 1
    assert [(r["method"], r["target"]) for r in data["rows"]] == [
        ("float32", None), ("mixquant", 5), ("mixquant", 3), ("budget-fisher", 5), ("budget-fisher", 3)]
    assert data["distinct_plans"] == len({tuple(r["bits"]) if r["bits"] else None for r in data["rows"]})
    assert all(r["avg_bits"] <= r["target"] for r in data["rows"][1:])
    assert any(r["pareto"] for r in data["rows"])
    header = (tmp_path / "c.csv").read_text().splitlines()[0].split(",")
    assert header == PLAN_ROW_COLUMNS and {"target", "pareto"} <= set(header)  # one row type: sweep's columns too
