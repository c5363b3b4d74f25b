"""Sensitivity page: one layer kind at a time (needs data) and the most sensitive layer by RQE."""
import pytest
from apptest_support import assert_ran_cleanly, charts, errors, new_app, open_page

from mixquant_core import Workspace, load_model
from mixquant_core.studies.kind_sensitivity import kinds_present, most_sensitive_by_rqe


def test_rqe_table_renders_without_data():
    at = new_app()
    open_page(at, "sensitivity")
    assert_ran_cleanly(at)
    assert not errors(at)
    assert any("No evaluation set" in i.value for i in at.info)  # kind section explains, RQE still shown
    ws = Workspace(load_model("efficientnet_lite0"))
    want = most_sensitive_by_rqe(ws.table())
    shown = at.dataframe[-1].value
    assert list(shown["bits"]) == [w.bits for w in want]
    assert list(shown["name"]) == [w.name for w in want]
    assert "rqe_chart" in charts(at)
    assert at.multiselect(key="sens_kinds").value == kinds_present(ws.layers)
    assert at.multiselect(key="sens_bits").value == [6, 4, 2]


@pytest.mark.data
def test_one_kind_at_a_time(val_dir):
    at = new_app(data=str(val_dir))
    open_page(at, "sensitivity")
    at.multiselect(key="sens_kinds").set_value(["first_conv", "fc"])
    at.multiselect(key="sens_bits").set_value([2])
    at.button(key="run_sensitivity").click().run()
    assert_ran_cleanly(at)
    assert not errors(at)
    frame = at.dataframe[0].value
    assert list(frame["kind"]) == ["first_conv", "fc"]
    assert list(frame["bits"]) == [2, 2]
    assert list(frame["layers"]) == [1, 1]
    fig = charts(at)["kind_chart"]
    assert {t.name for t in fig.data} == {"first_conv", "fc"}
    assert len(fig.layout.shapes) == 2  # float32 and int8 reference lines
    # the selection survives a trip to another page, and so do the results
    at.switch_page("app_pages/explore.py").run()
    at.switch_page("app_pages/sensitivity.py").run()
    assert at.multiselect(key="sens_bits").value == [2]
    assert list(at.dataframe[0].value["kind"]) == ["first_conv", "fc"]
