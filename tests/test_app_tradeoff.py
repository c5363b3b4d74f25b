"""Trade-off page: sweep with progress, baselines, Table-2 rows, budget pick, QEM shared with Explore."""
import numpy as np
import pytest
from apptest_support import array, assert_ran_cleanly, charts, errors, labelled_folder, new_app, open_page, png_bytes

from mixquant_core import Workspace, default_qem_grid, load_model


@pytest.fixture(scope="module")
def swept(val_dir):
    at = new_app(data=str(val_dir))
    open_page(at, "tradeoff")
    assert_ran_cleanly(at)
    assert not errors(at)
    assert at.button(key="run_sweep").label == "Evaluate trade-off"
    assert not at.get("plotly_chart")  # nothing is evaluated before the button
    at.number_input(key="sweep_steps").set_value(3)
    at.button(key="run_sweep").click().run()
    assert_ran_cleanly(at)
    return at


@pytest.mark.data
def test_sweep_shows_baselines_table_and_charts(swept):
    at = swept
    assert not errors(at)
    table = at.dataframe[0].value
    assert list(table["method"][:2]) == ["float32", "int8"]
    ws = Workspace(load_model("efficientnet_lite0"))
    grid = default_qem_grid(ws.table(), 3)
    np.testing.assert_allclose(table["QEM"][2:].to_numpy(dtype=float), grid)
    # sizes and bit sets come from the core's plans for those QEMs
    for qem, size_mb in zip(grid, table["size MB"][2:]):
        assert size_mb == pytest.approx(ws.size(ws.bits_for([qem])[0]).plan_mb)
    figs = charts(at)
    assert {"acc_qem_chart", "acc_size_chart"} <= set(figs)
    top1 = array(figs["acc_qem_chart"].data[0].y)
    np.testing.assert_allclose(top1, table["top-1 %"][2:].to_numpy(dtype=float))
    # float32 and int8 reference lines are drawn on the QEM chart
    assert len(figs["acc_qem_chart"].layout.shapes) == 2
    assert all(0 <= v <= 100 for v in table["top-1 %"])
    assert at.download_button(key="tradeoff_csv").label == "Download table (CSV)"


@pytest.mark.data
def test_sweep_table_and_text_carry_intervals(swept):
    at = swept
    table = at.dataframe[0].value
    assert (table["top-1 low"] <= table["top-1 %"]).all() and (table["top-1 %"] <= table["top-1 high"]).all()
    assert table["Δ top-1 vs float32"].isna()[0] and not table["Δ top-1 vs float32"][1:].isna().any()
    info = " ".join(i.value for i in at.info)
    assert "is known to about ±" in info and "int8 vs float32" in info
    figs = charts(at)
    assert figs["acc_qem_chart"].data[0].error_y.array is not None  # the curve draws its intervals


@pytest.mark.data
def test_budget_pick_and_use_sets_qem_everywhere(swept):
    at = swept
    table = at.dataframe[0].value
    f32 = float(table["top-1 %"][0])
    at.number_input(key="max_drop").set_value(100.0).run()
    at.button(key="find_target").click().run()
    assert_ran_cleanly(at)
    # with a 100-point allowance the smallest plan is the family's smallest (its last breakpoint)
    success = [s.value for s in at.success]
    assert any("Smallest plan within 100 points" in s and "distinct plans evaluated" in s for s in success), success
    ws = Workspace(load_model("efficientnet_lite0"))
    smallest_qem = float(ws.family().qems[-1])
    assert any("95 % interval" in m.value for m in list(at.info) + list(at.warning))  # how sure it is
    at.button(key="use_target_qem").click().run()
    biggest_qem = smallest_qem
    assert at.session_state["qem"] == pytest.approx(biggest_qem)
    at.switch_page("app_pages/explore.py").run()
    assert_ran_cleanly(at)
    assert "Set from the Trade-off page" in at.caption[0].value
    # Explore shows exactly the plan of that QEM (size metric)
    ws = Workspace(load_model("efficientnet_lite0"))
    size = ws.size(ws.bits_for([biggest_qem])[0])
    assert {m.label: m.value for m in at.metric}["Plan"] == f"{size.plan_mb:.2f} MB"
    assert f32 >= 0
    # coming back is free: the results are still there without pressing the button
    at.switch_page("app_pages/tradeoff.py").run()
    assert at.dataframe and list(at.dataframe[0].value["method"][:2]) == ["float32", "int8"]


@pytest.mark.data
def test_impossible_budget_is_explained(swept):
    at = swept
    at.switch_page("app_pages/tradeoff.py").run()
    at.number_input(key="max_drop").set_value(0.0).run()
    at.checkbox(key="target_confident").check().run()
    at.button(key="find_target").click().run()
    assert_ran_cleanly(at)
    # either some plan is surely within 0 points of float32, or the page says none is
    assert any("Smallest plan within 0 points" in s.value for s in at.success) or \
        any("No qem plan keeps top-1 within 0 points" in w.value for w in at.warning), [w.value for w in at.warning]


def test_unreadable_folder_stops_only_this_page(tmp_path):
    labelled_folder(tmp_path, {"a.jpg": (b"garbage", 1), "b.jpg": (b"more garbage", 2)})
    at = new_app(data=str(tmp_path))
    open_page(at, "tradeoff")
    assert_ran_cleanly(at)
    assert any("none of the 2 images" in e for e in errors(at)), errors(at)
    assert at.sidebar.text_input(key="data_dir").value == str(tmp_path)  # sidebar still usable


def test_one_unreadable_image_is_reported_and_left_out(tmp_path):
    labelled_folder(tmp_path, {"good.png": (png_bytes(), 1), "bad.jpg": (b"garbage", 2)})
    at = new_app(data=str(tmp_path))
    open_page(at, "tradeoff")
    assert_ran_cleanly(at)
    assert any("1 image(s) could not be read" in e and "bad.jpg" in e for e in errors(at)), errors(at)
    assert at.button(key="run_sweep")  # the page goes on with the readable image


@pytest.mark.data
def test_pareto_section_compares_methods_and_exports_a_point(swept):
    at = swept
    at.multiselect(key="pareto_methods").set_value(["uniform", "budget-qe"])
    at.multiselect(key="pareto_targets").set_value([6.0])
    at.button(key="run_pareto").click().run()
    assert_ran_cleanly(at)
    assert not errors(at)
    assert "pareto_chart" in charts(at)
    frame = at.dataframe[-1].value
    assert list(frame["method"]) == ["float32"] + ["uniform"] * 7 + ["budget-qe"]
    assert frame["pareto"].any()
    budget = frame[frame["method"] == "budget-qe"].iloc[0]
    assert budget["avg bits"] <= 6.0 + 1e-9
    # the budgeted plan is at least as accurate as the uniform 6-bit plan of the same budget
    assert budget["top-1 %"] >= float(frame[(frame["method"] == "uniform") & (frame["avg bits"] == 6.0)]["top-1 %"].iloc[0])
    label = next(o for o in at.selectbox(key="pareto_pick").options if o.startswith("budget-qe"))
    at.selectbox(key="pareto_pick").set_value(label).run()
    assert at.download_button(key="pareto_plan_json").label == "Download this point's plan (JSON)"
    # the exported point is the budgeted plan: its summary says so
    assert any("budget-qe" in c.value and "6 average bits" in c.value for c in at.caption), [c.value for c in at.caption]


@pytest.mark.data
def test_pareto_fisher_without_calibration_folder_is_an_error(swept):
    at = swept
    at.multiselect(key="pareto_methods").set_value(["budget-fisher"])
    at.text_input(key="calib_dir").set_value("")
    at.button(key="run_pareto").click().run()
    assert_ran_cleanly(at)
    assert any("needs a calibration folder" in e for e in errors(at))


@pytest.mark.data
def test_measure_latency_adds_the_column_and_the_chart(swept):
    at = swept
    assert "ms/image (batch 1)" in at.dataframe[0].value.columns and at.dataframe[0].value["ms/image (batch 1)"].isna().all()
    at.checkbox(key="measure_latency").check().run()
    assert_ran_cleanly(at)
    assert not errors(at)
    table = at.dataframe[0].value
    assert (table["ms/image (batch 1)"] > 0).all()
    fig = charts(at)["acc_latency_chart"]
    assert [t.name for t in fig.data] == ["MixQuant top-1", "float32", "int8"]
    np.testing.assert_allclose(array(fig.data[1].x), table["ms/image (batch 1)"][:1].to_numpy(dtype=float))
    at.checkbox(key="measure_latency").uncheck().run()  # off again: the measured table is not shown
    assert at.dataframe[0].value["ms/image (batch 1)"].isna().all() and "acc_latency_chart" not in charts(at)
