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
def test_budget_pick_and_use_sets_qem_everywhere(swept):
    at = swept
    table = at.dataframe[0].value
    f32 = float(table["top-1 %"][0])
    at.number_input(key="max_drop").set_value(100.0).run()
    # with a 100-point allowance the smallest plan is the largest QEM of the grid
    success = [s.value for s in at.success]
    assert any("Smallest plan within 100 points" in s for s in success), success
    biggest_qem = float(table["QEM"].iloc[-1])
    at.button(key="use_qem").click().run()
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
    assert_ran_cleanly(at)
    # either some plan matches float32 exactly, or the page says none does
    assert at.success or any("No evaluated plan stays within 0 points" in w.value for w in at.warning)


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
