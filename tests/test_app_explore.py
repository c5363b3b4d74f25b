"""Explore page: heatmap, QEM slider, plan and size figures follow the slider (values from the core)."""
import numpy as np
import pytest
from apptest_support import array, assert_ran_cleanly, charts, errors, new_app, open_page

from mixquant_core import Workspace, load_model

SLIDER = "QEM (quantization error multiplier, log scale)"


@pytest.fixture(scope="module")
def core_ws():
    """The same model and settings as the app's defaults, computed by the core directly."""
    return Workspace(load_model("efficientnet_lite0"), "asymmetric", (8, 7, 6, 5, 4, 3, 2), False, (), "cpu")


@pytest.fixture(scope="module")
def explore():
    at = new_app()
    open_page(at, "explore")
    assert_ran_cleanly(at)
    return at


def option(at, target):
    """The slider stop nearest ``target`` among the log-grid stops (their labels print exactly)."""
    stops = [float(o) for o in at.select_slider(key="qem_slider").options]
    exact = [q for q in stops if f"{q:.5g}" == f"{q:.3g}"]
    return min(exact, key=lambda q: abs(np.log(q / target)))


def test_explore_has_slider_heatmap_and_figures(explore, core_ws):
    at = explore
    assert not errors(at)
    slider = at.select_slider(key="qem_slider")
    assert slider.label == SLIDER
    figs = charts(at)
    assert {"family_chart", "plan_chart", "size_chart", "params_chart", "qe_heatmap"} <= set(figs)
    heat = figs["qe_heatmap"].data[0]
    names = [layer.name for layer in core_ws.layers]
    assert list(heat.y) == names  # model order
    table = core_ws.table()
    z = array(heat.z).astype(float)
    np.testing.assert_allclose(z, np.log10(table.qe), rtol=1e-6)
    hover = heat.hovertemplate
    for field in ("kind", "params", "QE", "RQE"):
        assert field in hover
    # the breakpoints marked on the family strip are exactly the core's distinct plans
    marks = array(figs["family_chart"].data[1].x)
    np.testing.assert_allclose(marks, core_ws.family().qems)
    labels = [m.label for m in at.metric]
    assert labels == ["float32", "Plan", "Compression", "Average bits"]


def test_moving_the_slider_changes_plan_and_size(explore, core_ws):
    at = explore
    seen = []
    for target in (2.0, 100.0, 3000.0):
        qem = option(at, target)
        at.select_slider(key="qem_slider").set_value(qem).run()
        assert_ran_cleanly(at)
        assert at.session_state["qem"] == qem
        figs = charts(at)
        plan_bits = {}
        for trace in figs["plan_chart"].data:
            plan_bits.update(zip(array(trace.x).tolist(), array(trace.y).tolist()))
        want = core_ws.bits_for([qem])[0]
        assert [plan_bits[layer.name] for layer in core_ws.layers] == want.tolist()
        size = core_ws.size(want)
        np.testing.assert_allclose(array(figs["size_chart"].data[0].y), [size.float32_mb, size.plan_mb])
        assert at.metric[1].value == f"{size.plan_mb:.2f} MB"
        assert at.metric[3].value == f"{size.avg_bits:.2f}"
        seen.append((tuple(want), size.plan_mb))
    # larger QEM: fewer bits and a smaller model, every step
    assert seen[0][1] > seen[1][1] > seen[2][1]
    assert len({bits for bits, _ in seen}) == 3


def test_qem_set_elsewhere_is_mirrored_by_the_slider(core_ws):
    at = new_app(qem=37.0)
    open_page(at, "explore")
    assert_ran_cleanly(at)
    assert at.select_slider(key="qem_slider").value == 37.0
    assert at.session_state["qem"] == 37.0
    size = core_ws.size(core_ws.bits_for([37.0])[0])
    assert {m.label: m.value for m in at.metric}["Plan"] == f"{size.plan_mb:.2f} MB"


def test_every_qem_snaps_to_a_slider_stop_with_the_same_plan(core_ws):
    from studio_ui.state import qem_options, snap_qem

    family = core_ws.family()
    options = qem_options(family.qems)
    assert options[0] == 1.0 and options[-1] > family.qems[-1]
    assert set(family.qems.tolist()) <= set(options)
    qems = np.concatenate([np.geomspace(1.0, options[-1] * 2, 400), family.qems, np.nextafter(family.qems, 0)[1:]])
    snapped = [snap_qem(options, q) for q in qems]
    assert all(s <= q for s, q in zip(snapped, qems))
    np.testing.assert_array_equal(core_ws.bits_for(snapped), core_ws.bits_for(qems))


def test_sidebar_choices_drive_the_plan_and_survive_page_changes():
    at = new_app()
    open_page(at, "explore")
    at.sidebar.selectbox(key="quantizer").set_value("per-channel-mse")  # an MSE-clipped range, end to end
    at.sidebar.checkbox(key="keep_first_last").check()
    at.run()
    assert_ran_cleanly(at)
    ws = Workspace(load_model("efficientnet_lite0"), "per-channel-mse", (8, 7, 6, 5, 4, 3, 2), True, (), "cpu")
    qem = at.session_state["qem"]
    bits = ws.bits_for([qem])[0]
    assert bits[0] == bits[-1] == 8  # pinned
    assert {m.label: m.value for m in at.metric}["Plan"] == f"{ws.size(bits).plan_mb:.2f} MB"
    at.switch_page("app_pages/export.py").run()
    at.switch_page("app_pages/explore.py").run()
    assert at.sidebar.selectbox(key="quantizer").value == "per-channel-mse"
    assert at.sidebar.checkbox(key="keep_first_last").value is True
    assert {m.label: m.value for m in at.metric}["Plan"] == f"{ws.size(bits).plan_mb:.2f} MB"
