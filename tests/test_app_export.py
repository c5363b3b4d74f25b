"""Export page: the plan JSON loads back to the same plan; uploaded plans are checked, errors shown."""
import json

import pytest
from apptest_support import assert_ran_cleanly, errors, new_app, open_page

from mixquant_core import Plan, Workspace, load_model


@pytest.fixture(scope="module")
def core_ws():
    return Workspace(load_model("efficientnet_lite0"))


@pytest.fixture
def export():
    at = new_app(qem=64.0)
    open_page(at, "export")
    assert_ran_cleanly(at)
    return at


def exported(at) -> str:
    return at.code[0].value


def test_exported_json_loads_back_to_the_same_plan(export, core_ws):
    at = export
    assert not errors(at)
    assert at.download_button(key="plan_json").label == "Download plan (JSON)"
    plan = Plan.from_json(exported(at))
    want = core_ws.plan(64.0)
    assert plan.bits == want.bits
    assert plan.qem == 64.0 and plan.quantizer == "asymmetric"
    assert plan.model == want.model
    assert plan.size == pytest.approx(want.size)
    assert [l.name for l in plan.check_against(core_ws.loaded.model)] == [l.name for l in core_ws.layers]


def test_uploading_a_good_plan_shows_it(export, core_ws, tmp_path):
    at = export
    other = core_ws.plan(500.0)
    at.file_uploader(key="plan_upload").upload("plan.json", other.to_json().encode(), "application/json")
    at.run()
    assert_ran_cleanly(at)
    assert not errors(at)
    assert any("fits efficientnet_lite0" in s.value for s in at.success)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Plan size"] == f"{other.size['plan_mb']:.2f} MB"
    assert list(at.dataframe[0].value["bits"]) == list(other.bits.values())


@pytest.mark.parametrize("content, message", [
    (b"{not json", "plan is not valid JSON"),
    (b'{"format": "something-else"}', "not a MixQuant plan"),
    (b"[1, 2, 3]", "plan JSON must be an object"),
])
def test_malformed_plan_files_show_an_error(export, content, message):
    at = export
    at.file_uploader(key="plan_upload").upload("bad.json", content, "application/json")
    at.run()
    assert_ran_cleanly(at)
    errs = errors(at)
    assert len(errs) == 1 and "'bad.json' cannot be used" in errs[0] and message in errs[0], errs
    assert at.download_button(key="plan_json")  # the rest of the page still works


def test_plan_with_bad_bits_names_the_field(export, core_ws):
    data = core_ws.plan(10.0).to_dict()
    first = next(iter(data["layers"]))
    data["layers"][first]["bits"] = 11
    at = export
    at.file_uploader(key="plan_upload").upload("bits.json", json.dumps(data).encode(), "application/json")
    at.run()
    errs = errors(at)
    assert len(errs) == 1 and f"layers/{first}/bits" in errs[0], errs


def test_plan_for_another_model_is_refused(export, core_ws):
    data = core_ws.plan(10.0).to_dict()
    data["layers"] = {"features.0.0": {"bits": 4, "params": 864}, **data["layers"]}
    data["model"]["name"] = "mobilenet_v2"
    at = export
    at.file_uploader(key="plan_upload").upload("other.json", json.dumps(data).encode(), "application/json")
    at.run()
    errs = errors(at)
    assert len(errs) == 1 and "plan is for another model" in errs[0] and "features.0.0" in errs[0], errs


def test_quantized_model_file_builds_checks_and_refuses_junk(export, core_ws):
    from mixquant_core.export.packed import quantized_model_bytes

    at = export
    at.button(key="build_export").click().run()
    assert_ran_cleanly(at)
    assert not errors(at)
    assert at.download_button(key="model_safetensors").label == "Download quantized model (.safetensors)"
    note = next(c.value for c in at.caption if "on disk" in c.value)
    data = quantized_model_bytes(core_ws.loaded.model, core_ws.plan(64.0))
    assert f"{len(data) / 1e6:.3f} MB on disk" in note
    # the same file, uploaded back, is accepted; junk is refused with one line
    at.file_uploader(key="export_upload").upload("lite0.safetensors", data, "application/octet-stream")
    at.run()
    assert any("fits efficientnet_lite0" in s.value and "50 quantized layers" in s.value for s in at.success)
    at.file_uploader(key="export_upload").upload("junk.safetensors", b"\x00" * 64, "application/octet-stream")
    at.run()
    assert_ran_cleanly(at)
    assert any(e.startswith("'junk.safetensors' cannot be used:") for e in errors(at))
    assert at.download_button(key="plan_json")  # the rest of the page still works


def test_onnx_model_builds_checked_and_truncated_upload_refused(export, core_ws):
    from mixquant_core.export.onnx import onnx_bytes, read_onnx

    at = export
    at.button(key="build_onnx").click().run()
    assert_ran_cleanly(at)
    assert not errors(at)
    assert at.download_button(key="model_onnx").label == "Download quantized model (.onnx)"
    note = next(c.value for c in at.caption if c.value.startswith("Checked: ONNX Runtime opens it."))
    data = onnx_bytes(core_ws.loaded.model, core_ws.plan(64.0), core_ws.loaded.preprocess)
    assert f"{len(data) / 1e6:.3f} MB on disk" in note
    assert read_onnx(data, core_ws.loaded.model).plan.bits == core_ws.plan(64.0).bits
    at.file_uploader(key="export_upload").upload("lite0.onnx", data, "application/octet-stream")
    at.run()
    assert any("ONNX export of efficientnet_lite0 that ONNX Runtime runs" in s.value for s in at.success)
    at.file_uploader(key="export_upload").upload("cut.onnx", data[: len(data) // 3], "application/octet-stream")
    at.run()
    assert_ran_cleanly(at)
    errs = errors(at)
    assert len(errs) == 1 and errs[0].startswith("'cut.onnx' cannot be used:") and "\n" not in errs[0], errs
    assert at.download_button(key="plan_json")  # the rest of the page still works


def test_sidebar_engine_select_reaches_the_workspace(export):
    at = export
    assert at.sidebar.selectbox(key="engine").value == "auto"
    at.sidebar.selectbox(key="engine").set_value("torch").run()
    assert_ran_cleanly(at)
    assert at.session_state["settings"].engine == "torch"
    s = at.session_state["settings"]
    assert s.workspace_key[5:7] == ("torch", "")  # engine, then the (empty) Ray cluster


def test_built_onnx_file_latency_against_float32(export):
    at = export
    at.button(key="build_onnx").click().run()
    assert_ran_cleanly(at)
    at.number_input(key="latency_runs").set_value(2)
    at.number_input(key="latency_batch").set_value(2)
    at.button(key="onnx_latency").click().run()
    assert_ran_cleanly(at)
    assert not errors(at)
    table = next(d.value for d in at.dataframe if "ms/image (batch 1)" in d.value.columns)
    pairs = list(zip(table["runtime"], table["model"]))
    assert pairs == [("onnxruntime", "float32"), ("onnxruntime", "file"), ("openvino", "float32"), ("openvino", "file")]
    assert (table["ms/image (batch 1)"] > 0).all() and (table["images/s (batch 2)"] > 0).all()
    assert list(table["x float32 (batch 1)"][[0, 2]]) == [1.0, 1.0] and (table["x float32 (batch 1)"] > 0).all()
    assert any("x float32: speed against the float32 model" in c.value for c in at.caption)
