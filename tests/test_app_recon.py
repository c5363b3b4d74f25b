"""Reconstruction in the app: a background job on the Trade-off page (progress, cancel, one-line errors,
metrics beside round-to-nearest), and its file on the Export page."""
from __future__ import annotations

import time

import pytest
from apptest_support import assert_ran_cleanly, charts, errors, new_app, open_page

from mixquant_core import load_model, load_tensors, open_image_folder
from mixquant_core.export.packed import read_quantized
from mixquant_core.recon.reconstruct import evaluate_quantized
from mixquant_core.evaluations import Evaluations
from mixquant_core.workspace import Workspace

EVAL = 8  # evaluation images: the numbers only have to match the core's, not be meaningful
JOB_WAIT = 300  # seconds: a 1-iteration job on 4 images takes ~5 s quiet, ~20 s on a loaded 2-core machine
TINY = dict(recon_iters=1, recon_calib_images=4, recon_batch=4, recon_seed=0, recon_method="brecq")


def job_of(at):
    return at.session_state["recon_jobs"][-1]


def run_until_ended(at, timeout: float = JOB_WAIT) -> list:
    """Rerun the page (what the polling fragment does in a browser) until the job ends; returns the
    progress texts seen while it ran."""
    seen, deadline = [], time.monotonic() + timeout
    while job_of(at).running:
        assert time.monotonic() < deadline, f"job still running after {timeout} s: {job_of(at).stage}"
        seen += [p.proto.text for p in at.get("progress")]
        job_of(at).wait(1.0)
        at.run()
        assert_ran_cleanly(at)
    at.run()
    assert_ran_cleanly(at)
    return seen


@pytest.fixture(scope="module")
def finished(val_dir, data_root):
    at = new_app(data=str(val_dir), limit=EVAL, recon_calib_dir=str(data_root / "imagenet-calib-1000"), **TINY)
    open_page(at, "tradeoff")
    assert_ran_cleanly(at)
    assert not errors(at)
    assert at.button(key="recon_start").label == "Start reconstruction"
    assert at.number_input(key="recon_iters").value == 1
    at.button(key="recon_start").click().run()
    assert_ran_cleanly(at)
    assert not errors(at)
    try:
        yield at, run_until_ended(at)
    finally:  # never leave a job running past the tests (it would outlive the interpreter's torch)
        stop(at)


def stop(at) -> None:
    for job in at.session_state["recon_jobs"]:
        job.cancel()
        job.wait(120)


@pytest.mark.data
def test_job_runs_in_the_background_and_shows_metrics_beside_nearest(finished, val_dir):
    at, progress = finished
    job = job_of(at)
    assert job.status == "done", job.error
    assert not errors(at)
    assert any(text.startswith("Reconstructing QEM 20:") for text in progress), progress
    # every number shown is the core's: the reconstructed codes and round-to-nearest of the same plan
    ws = Workspace(load_model("efficientnet_lite0"), device="cpu")
    data = load_tensors(open_image_folder(str(val_dir)).subset(EVAL), ws.loaded.preprocess)
    learned = evaluate_quantized(ws.loaded.model, job.result.layers, data, "cpu")
    nearest = Evaluations(ws).evaluate_plan(job.plan, data)
    metrics = {m.label: m for m in at.metric}
    assert metrics["Reconstructed top-1"].value == f"{learned.top1:.2f} %"
    assert metrics["Reconstructed top-5"].value == f"{learned.top5:.2f} %"
    assert metrics["Reconstructed loss"].value == f"{learned.loss:.4f}"
    assert metrics["Reconstructed top-1"].delta == f"{learned.top1 - nearest.top1:+.2f} vs nearest"
    captions = [c.value for c in at.caption]
    assert any(f"top-1 {nearest.top1:.2f} %, top-5 {nearest.top5:.2f} %, loss {nearest.loss:.4f}" in c for c in captions)
    assert any(c.startswith(f"1 iteration per block over {len(job.result.blocks)} blocks, 4 calibration images")
               and "on cpu" in c for c in captions), captions
    # per-block error: chart and table, one row per block in model order
    fig = charts(at)["recon_block_chart"]
    assert list(fig.data[0].x) == [b.name for b in job.result.blocks]
    table = at.dataframe[-1].value
    assert list(table["block"]) == [b.name for b in job.result.blocks]
    assert list(table["error, learned"]) == pytest.approx([b.mse_learned for b in job.result.blocks])


@pytest.mark.data
def test_export_page_offers_the_reconstructed_file(finished):
    at, _ = finished
    job = job_of(at)
    at.switch_page("app_pages/export.py").run()
    assert_ran_cleanly(at)
    assert not [i.value for i in at.info if "another plan" in i.value]  # same QEM: the current plan
    at.button(key="build_recon_export").click().run()
    assert_ran_cleanly(at)
    assert not errors(at)
    assert at.download_button(key="recon_safetensors").label == "Download reconstructed model (.safetensors)"
    data = at.session_state["recon_files"][job.id]  # the bytes handed to the download button
    note = next(c.value for c in at.caption if c.value.startswith("Reconstructed:"))
    assert f"{len(data) / 1e6:.3f} MB on disk" in note
    qf = read_quantized(data, load_model("efficientnet_lite0").model)
    assert qf.plan.bits == job.plan.bits and qf.scheme == "per-channel-mse"
    assert "adaround" in qf.metadata["reconstruction"]
    for name, q in qf.layers.items():
        b = job.plan.bits[name]
        assert q.nbits == b and int(q.codes.max()) < 2**b, name
        assert (q.codes == job.result.layers[name].codes).all(), name
    # another QEM: the file is still offered, labelled with its own plan
    at.session_state["qem"] = 3000.0
    at.run()
    assert any("another plan (QEM 20" in i.value for i in at.info), [i.value for i in at.info]
    assert at.button(key="build_recon_export").label == "Build the reconstructed model file for QEM 20"


@pytest.mark.data
def test_missing_calibration_folder_is_one_error_line(val_dir, tmp_path):
    at = new_app(data=str(val_dir), limit=EVAL, recon_calib_dir=str(tmp_path / "nowhere"), **TINY)
    open_page(at, "tradeoff")
    at.button(key="recon_start").click().run()
    assert_ran_cleanly(at)
    errs = errors(at)
    assert len(errs) == 1 and errs[0].startswith("Cannot start the reconstruction:") and "nowhere" in errs[0], errs
    assert "\n" not in errs[0]
    assert not at.session_state["recon_jobs"]  # nothing started


@pytest.mark.data
def test_failure_inside_the_job_is_one_error_line(val_dir, tmp_path):
    for i in range(2):
        (tmp_path / f"bad{i}.jpg").write_bytes(b"not an image")
    at = new_app(data=str(val_dir), limit=EVAL, recon_calib_dir=str(tmp_path), **TINY)
    open_page(at, "tradeoff")
    at.button(key="recon_start").click().run()
    try:
        run_until_ended(at)
    finally:
        stop(at)
    assert job_of(at).status == "failed"
    errs = errors(at)
    assert len(errs) == 1 and errs[0].startswith("Reconstruction of QEM 20 failed:"), errs
    assert "none of the 2 images" in errs[0] and "\n" not in errs[0]


@pytest.mark.data
def test_second_start_is_refused_and_cancel_ends_the_job(val_dir, data_root):
    at = new_app(data=str(val_dir), limit=EVAL, recon_calib_dir=str(data_root / "imagenet-calib-1000"),
                 **{**TINY, "recon_iters": 20000})
    open_page(at, "tradeoff")
    at.button(key="recon_start").click().run()
    job = job_of(at)
    try:
        assert job.running
        at.button(key="recon_start").click().run()
        assert any("already running" in w.value for w in at.warning), [w.value for w in at.warning]
        assert at.session_state["recon_jobs"] == [job]
        at.button(key="recon_cancel").click().run()
        assert_ran_cleanly(at)
        run_until_ended(at, timeout=120)
    finally:
        stop(at)
    assert job.status == "cancelled" and job.result is None
    assert any("was cancelled" in i.value for i in at.info), [i.value for i in at.info]
    assert not errors(at) and not at.get("progress")


@pytest.mark.data
def test_gptq_is_offered_and_runs_as_a_job(val_dir, data_root):
    at = new_app(data=str(val_dir), limit=EVAL, recon_calib_dir=str(data_root / "imagenet-calib-1000"),
                 **{**TINY, "recon_method": "gptq"})
    open_page(at, "tradeoff")
    from studio_ui.recon_panel import METHOD_LABELS

    assert METHOD_LABELS["gptq"] in at.selectbox(key="recon_method").options
    fresh = new_app(data=str(val_dir), limit=EVAL)
    open_page(fresh, "tradeoff")
    assert fresh.selectbox(key="recon_method").value == "gptq"  # the panel's default: it won the trade
    at.button(key="recon_start").click().run()
    try:
        run_until_ended(at)
    finally:
        stop(at)
    job = job_of(at)
    assert job.status == "done" and job.config.method == "gptq", job.error
    assert not errors(at)
    assert any(c.value.startswith(f"GPTQ over {len(job.result.blocks)} blocks") for c in at.caption)
    # 4 calibration images: the classifier (1280 inputs) keeps round-to-nearest, and the panel says so
    assert any(c.value.startswith("Note: _fc: round-to-nearest, its Hessian has 4 calibration samples")
               for c in at.caption), [c.value for c in at.caption]
