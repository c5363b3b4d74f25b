"""figures.py: pure figure builders, checked on real QE tables and real Workspace rows."""
import numpy as np
import plotly.graph_objects as go
import pytest

from mixquant_core import find_layers, qe_table
from mixquant_viz import figures
from mixquant_core.plans.search import breakpoints, search
from mixquant_core.studies.kind_sensitivity import KindResult, most_sensitive_by_rqe
from mixquant_core.plans.size import float32_bytes, params_per_bits, plan_size
from mixquant_core.evaluations import PlanRow


@pytest.fixture
def table(tiny_model):
    return qe_table(tiny_model)


def test_plots_module_does_not_import_streamlit():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(figures))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "streamlit" not in imported


def test_heatmap_is_log_qe_in_model_order_with_hover(table):
    fig = figures.qe_heatmap(table)
    heat = fig.data[0]
    assert isinstance(heat, go.Heatmap)
    assert list(heat.y) == table.names
    assert list(heat.x) == [f"{b} bit" for b in table.bits]
    np.testing.assert_allclose(np.asarray(heat.z, dtype=float), np.log10(table.qe))
    custom = np.asarray(heat.customdata)
    assert custom.shape == (len(table.layers), len(table.bits), 4)
    np.testing.assert_allclose(custom[..., 3].astype(float), table.rqe)
    assert fig.layout.yaxis.autorange == "reversed"
    ticks = list(fig.data[0].colorbar.tickvals)
    assert ticks == sorted(ticks) and heat.zmin <= np.nanmin(heat.z) and heat.zmax >= np.nanmax(heat.z)


def test_heatmap_leaves_exact_zero_qe_blank(tiny_model):
    import torch

    with torch.no_grad():
        tiny_model.fc.weight.zero_()  # an all-zero layer quantizes exactly: QE 0 has no logarithm
    table = qe_table(tiny_model)
    z = np.asarray(figures.qe_heatmap(table).data[0].z, dtype=float)
    row = table.names.index("fc")
    assert np.isnan(z[row]).all()
    assert np.isfinite(np.delete(z, row, axis=0)).all()


def test_plan_bar_shows_every_layer_once_by_kind(tiny_model, table):
    layers = find_layers(tiny_model)
    bits = search(table, 50.0)
    fig = figures.plan_bits_bar(layers, bits, pinned=[True] + [False] * (len(layers) - 1))
    shown = {x: y for trace in fig.data for x, y in zip(trace.x, trace.y)}
    assert shown == {layer.name: int(b) for layer, b in zip(layers, bits)}
    assert {trace.name for trace in fig.data} == {layer.kind for layer in layers}
    assert list(fig.layout.xaxis.categoryarray) == [layer.name for layer in layers]
    assert "pinned" in fig.data[0].customdata[0][1]


def test_size_and_params_figures_follow_the_plan(tiny_model, table):
    layers = find_layers(tiny_model)
    fb = float32_bytes(tiny_model)
    small, large = search(table, 1000.0), search(table, 1.0)
    figs = [figures.size_bars(plan_size(fb, layers, b, "asymmetric")) for b in (small, large)]
    assert figs[0].data[0].y[1] < figs[1].data[0].y[1]
    assert figs[0].data[0].y[0] == figs[1].data[0].y[0] == pytest.approx(fb / 1e6)
    counts = params_per_bits(layers, small)
    fig = figures.params_per_bits_bar(counts)
    assert list(fig.data[0].y) == [counts[b] for b in sorted(counts, reverse=True)]
    assert sum(fig.data[0].y) == sum(layer.params for layer in layers)


def test_family_strip_marks_every_breakpoint(table):
    fam = breakpoints(table)
    avg = [float(b.mean()) for b in fam.bits]
    fig = figures.qem_family(fam.qems, avg, [1.0] * len(fam), qem=7.0)
    np.testing.assert_allclose(fig.data[1].x, fam.qems)
    assert fig.layout.xaxis.type == "log"
    assert fig.data[0].line.shape == "hv"
    assert list(fig.data[2].x) == [7.0, 7.0]  # the chosen QEM
    assert fig.layout.xaxis.range[1] == pytest.approx(np.log10(fam.qems[-1] * 1.2) + 0.05)


def _rows():
    return [
        PlanRow("float32", None, "all float32", 80.0, 95.0, 0.9, None, 32.0, 20.0, 1.0),
        PlanRow("int8", None, "8", 79.0, 94.0, 0.95, 1e-6, 8.0, 5.0, 4.0),
        PlanRow("mixquant", 4.0, "7, 8", 79.5, 94.5, 0.93, 2e-6, 7.5, 4.7, 4.3),
        PlanRow("mixquant", 64.0, "5, 6", 70.0, 90.0, 1.3, 5e-5, 5.5, 3.5, 5.7),
    ]


def test_accuracy_figures_have_points_and_reference_lines():
    rows = _rows()
    fig = figures.accuracy_vs_qem(rows)
    assert list(fig.data[0].x) == [4.0, 64.0] and list(fig.data[0].y) == [79.5, 70.0]
    assert list(fig.data[1].y) == [94.5, 90.0]
    assert [s.y0 for s in fig.layout.shapes] == [80.0, 79.0]
    fig = figures.accuracy_vs_size([r.to_dict() for r in rows])  # dicts work too
    assert list(fig.data[0].x) == [4.7, 3.5]
    assert [t.name for t in fig.data[1:]] == ["float32", "int8"]
    assert [s.y0 for s in fig.layout.shapes] == [80.0, 79.0]


def test_sensitivity_figures(table):
    results = [KindResult("fc", b, 1, 10, 50.0 + b, 80.0, 1.0) for b in (6, 4, 2)]
    results += [KindResult("depthwise", 4, 3, 90, 20.0, 40.0, 3.0)]
    fig = figures.kind_sensitivity_figure(results, int8_top1=60.0, float_top1=61.0)
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["fc"].x) == [2, 4, 6] and list(by_name["fc"].y) == [52.0, 54.0, 56.0]
    assert [s.y0 for s in fig.layout.shapes] == [61.0, 60.0]
    top = most_sensitive_by_rqe(table)
    fig = figures.most_sensitive_figure(top)
    assert list(fig.data[0].text) == [t.name for t in top]
    assert fig.layout.yaxis.type == "log"


def test_accuracy_figures_draw_intervals_and_mark_early_stops():
    vs = {"delta_top1": -1.0, "delta_ci": [-3.0, 1.0], "p_value": 0.5}
    rows = [
        PlanRow("float32", None, "all float32", 80.0, 95.0, 0.9, None, 32.0, 20.0, 1.0, (72.0, 86.0), (90.0, 98.0), None, 100),
        PlanRow("mixquant", 4.0, "7, 8", 79.0, 94.0, 0.9, 2e-6, 7.5, 4.7, 4.3, (70.0, 85.0), (88.0, 97.0), vs, 100),
        PlanRow("mixquant", 64.0, "2", 0.0, 1.0, 9.0, 5e-3, 2.0, 1.5, 12.0, (0.0, 7.0), (0.2, 9.0),
                 {"delta_top1": -80.0, "delta_ci": [-87.0, -70.0], "p_value": 1e-20}, 52, True),
    ]
    fig = figures.accuracy_vs_qem(rows)
    bars = fig.data[0].error_y
    assert list(bars.array) == [6.0, 7.0] and list(bars.arrayminus) == [9.0, 0.0]
    assert list(fig.data[0].marker.symbol) == ["circle", "x"]
    assert "within noise" in fig.data[0].customdata[0][3]
    assert "stopped early after 52 images" in fig.data[0].customdata[1][3]
    size = figures.accuracy_vs_size(rows)
    assert list(size.data[0].error_y.array) == [6.0, 7.0]
    assert list(size.data[1].error_y.arrayminus) == [8.0]  # float32's own interval
    assert figures.interval_bars([r.to_dict() for r in _rows()], "top1") is None  # rows without intervals: no bars


def test_accuracy_vs_latency_draws_measured_plans_only():
    from dataclasses import replace

    rows = _rows()
    timed = [replace(r, latency_ms=ms) for r, ms in zip(rows, (9.0, 7.0, 6.5, None))]  # the last plan: not measured
    fig = figures.accuracy_vs_latency(timed)
    assert [t.name for t in fig.data] == ["MixQuant top-1", "float32", "int8"]
    assert list(fig.data[0].x) == [6.5] and list(fig.data[0].y) == [79.5]
    assert list(fig.data[1].x) == [9.0] and list(fig.data[2].x) == [7.0]
    assert "latency" in fig.layout.xaxis.title.text
    assert [s.y0 for s in fig.layout.shapes] == [80.0, 79.0]
    compared = [replace(timed[0]), replace(timed[2], method="budget-qe")]  # a comparison's methods get a trace each
    assert [t.name for t in figures.accuracy_vs_latency(compared).data] == ["budget-qe", "float32"]
