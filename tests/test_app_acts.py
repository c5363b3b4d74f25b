"""The sidebar's "Activations" choice (issue #20): 8-bit inputs calibrated on the calibration images,
the Sensitivity page's per-layer activation table, and a bad calibration folder as one st.error."""
import pytest
from apptest_support import assert_ran_cleanly, charts, errors, new_app, open_page


@pytest.mark.data
def test_eight_bit_activations_and_their_sensitivity(val_dir, data_root):
    at = new_app(data=str(val_dir), limit=2, engine="torch", activations="8-bit", act_range="minmax",
                 act_calib_dir=str(data_root / "imagenet-calib-1000"), act_calib_images=2)
    open_page(at, "sensitivity")
    assert_ran_cleanly(at)
    assert not errors(at)
    s = at.session_state["settings"]
    assert s.act_bits == 8 and s.act_range == "minmax" and s.calib_images == 2
    assert s.acts_key in s.workspace_key  # a Workspace per activation choice
    at.button(key="run_act_sensitivity").click().run(timeout=900)  # 50 layers, one evaluation each
    assert_ran_cleanly(at)
    assert not errors(at)
    fig = charts(at)["act_chart"]
    assert list(fig.data[0].x)[0] == "_conv_stem" and len(fig.data[0].x) == 50
    frame = at.dataframe[-1].value
    assert set(frame["name"]) == set(fig.data[0].x) and "loss_increase" in frame


def test_float_activations_say_how_to_measure_them():
    at = new_app()
    open_page(at, "sensitivity")
    assert_ran_cleanly(at)
    assert any("8-bit" in i.value and "sidebar" in i.value for i in at.info)


def test_a_bad_calibration_folder_is_one_error(tmp_path):
    at = new_app(activations="8-bit", act_calib_dir=str(tmp_path / "missing"))
    open_page(at, "home")
    assert_ran_cleanly(at)
    (message,) = errors(at)
    assert "missing" in message and "\n" not in message


@pytest.mark.data
def test_export_page_builds_exact_or_signed_int8_weights(data_root):
    """A W8A8 plan on per-channel symmetric codes: the ONNX file is exact by default (no layer can
    saturate), and with 'Signed int8 weights' the page warns which layers can saturate on AVX2."""
    at = new_app(qem=1.0, quantizer="per-channel-symmetric", activations="8-bit", act_range="minmax",
                 act_calib_dir=str(data_root / "imagenet-calib-1000"), act_calib_images=2)
    open_page(at, "export")
    assert_ran_cleanly(at)
    assert not at.checkbox(key="onnx_signed_int8").value
    at.button(key="build_onnx").click().run(timeout=300)
    assert_ran_cleanly(at)
    assert not errors(at) and not at.warning
    at.checkbox(key="onnx_signed_int8").check().run()
    at.button(key="build_onnx").click().run(timeout=300)
    assert_ran_cleanly(at)
    assert not errors(at)
    (warning,) = [w.value for w in at.warning]
    assert "of 49 integer layers hold int8 codes that can saturate" in warning
