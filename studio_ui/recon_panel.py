"""The Trade-off page's reconstruction section: start, watch and cancel a background AdaRound + BRECQ
job, then compare its accuracy with round-to-nearest of the same plan.

The job is studio_ui.recon_job (a thread calling the core, like `mixquant reconstruct`); this
module reads widgets, polls the job, and draws numbers that come from core functions.
"""
from __future__ import annotations

import threading

import pandas as pd
import streamlit as st

from mixquant_core.data.image_sets import default_calib_dir
from mixquant_viz.recon import block_error_figure
from mixquant_core.recon.reconstruct import METHODS, SCHEMES, ReconConfig, evaluate_quantized

from . import recon_job, state
from .progress import progress
from .settings import QUANTIZER_LABELS

POLL_SECONDS = 1.0
METHOD_LABELS = {"brecq": "AdaRound + BRECQ (learned, block by block)", "gptq": "GPTQ (one pass, no fitting)",
                 "gptq+brecq": "BRECQ started from GPTQ"}
# GPTQ won the time/accuracy trade on Lite0 (docs/RESULTS.md, issue #22): uniform 4 bits 79.5 % in
# 92 s against BRECQ's 76.8 % in 21 minutes; at 3 average bits within half a point of BRECQ in a sixth of the time.
DEFAULT_METHOD = "gptq"


def session_jobs() -> list:
    return st.session_state.setdefault("recon_jobs", [])


def plan_choices(ws, mq_rows) -> dict:
    """Label -> Plan: the current QEM's plan first, then each other distinct plan the sweep evaluated."""
    out, seen = {}, set()
    for prefix, qem in [("Current QEM", state.current_qem())] + [("QEM", r.qem) for r in mq_rows]:
        plan = ws.plan(qem)
        bits = tuple(plan.bits.values())
        if bits not in seen:
            seen.add(bits)
            out[f"{prefix} {qem:.4g}: {plan.size['avg_bits']:.2f} average bits, {plan.size['plan_mb']:.2f} MB"] = plan
    return out


def render(ws, ev, data, mq_rows) -> None:
    st.subheader("Reconstruction (AdaRound + BRECQ, GPTQ)")
    st.caption("Round-to-nearest is not the best rounding: AdaRound learns, for each weight, whether to round up "
               "or down, block by block (BRECQ) so that each block's output on calibration images matches "
               "float32; GPTQ chooses the codes column by column from each layer's input statistics, in one "
               "pass. Same plan, same bits per layer, same file size; it runs in the background, so the "
               "other pages stay usable meanwhile.")
    choices = plan_choices(ws, mq_rows)
    if st.session_state.get("recon_plan") not in choices:  # the QEM or the sweep changed since
        st.session_state.pop("recon_plan", None)
    state.persist(recon_iters=100, recon_calib_images=256, recon_batch=32, recon_seed=0,
                  recon_calib_dir=default_calib_dir() or "", recon_scheme=SCHEMES[0], recon_method=DEFAULT_METHOD)
    top = st.columns([2, 1])
    label = top[0].selectbox("Plan to reconstruct", list(choices), key="recon_plan",
                             help="The current QEM's plan, or any other plan the sweep above evaluated.")
    method = top[1].selectbox("Method", METHODS, key="recon_method", format_func=METHOD_LABELS.get,
                              help="GPTQ needs no iterations (minutes on a CPU); BRECQ fits the rounding and "
                                   "takes longer; BRECQ started from GPTQ's rounding combines both.")
    c = st.columns(4)
    iters = c[0].number_input("Iterations per block", min_value=1, max_value=20000, step=50, key="recon_iters",
                              help="Optimisation steps per block. BRECQ uses 20,000 on a GPU; on a CPU a few "
                                   "hundred already lower the error. Time grows in proportion.")
    n_calib = c[1].number_input("Calibration images", min_value=1, max_value=1024, step=64, key="recon_calib_images",
                                help="Spread over the calibration folder. BRECQ uses 1,024.")
    batch = c[2].number_input("Batch size", min_value=1, max_value=256, key="recon_batch")
    seed = c[3].number_input("Seed", min_value=0, max_value=2**31 - 1, key="recon_seed")
    left, right = st.columns(2)
    calib_dir = left.text_input("Calibration folder", key="recon_calib_dir",
                                help="Images the model did not see in evaluation (labels are not used). "
                                     "Default: $MIXQUANT_DATA/imagenet-calib-1000.")
    scheme = right.selectbox("Base quantizer", SCHEMES, key="recon_scheme", format_func=QUANTIZER_LABELS.get,
                           help="The grid the rounding is learned on; MSE-clipped per channel is BRECQ's.")
    if st.button("Start reconstruction", type="primary", key="recon_start"):
        cfg = ReconConfig(iters=int(iters), batch_size=int(batch), scheme=scheme, seed=int(seed), device=str(ws.device),
                          method=method)
        _start(ws, choices[label], calib_dir.strip(), int(n_calib), cfg)

    jobs = session_jobs()
    job = recon_job.latest(jobs)
    if job is None:
        st.info("Press **Start reconstruction** to learn the rounding of the chosen plan.")
    elif job.running:
        _watch(job)
    elif job.status == recon_job.FAILED:
        st.error(f"Reconstruction of {job.label} failed: {job.error}")
    elif job.status == recon_job.CANCELLED:
        st.info(f"Reconstruction of {job.label} was cancelled after {job.elapsed:.0f} s.")
    done, any_done = recon_job.latest_done(jobs, state.settings().model_key), recon_job.latest_done(jobs)
    if done is not None:
        _results(ev, data, done)
    elif any_done is not None:
        st.info(f"The finished reconstruction is for {any_done.model_name}; choose that model in the sidebar to see it.")


def _start(ws, plan, calib_dir: str, n_calib: int, cfg: ReconConfig) -> None:
    jobs = session_jobs()
    try:
        recon_job.check_can_start(ws.loaded, plan, calib_dir, n_calib)
        job = recon_job.ReconJob(state.settings().model_key, ws.loaded.name, plan, calib_dir, n_calib, cfg)
        # evaluations use the workspace's private copy: the shared model never changes, nothing to wait for
        recon_job.start(jobs, job, ws.loaded, threading.Lock())
    except recon_job.JobRefused as exc:
        st.warning(f"Not started: {exc}.")
    except state.USER_ERRORS as exc:
        st.error(f"Cannot start the reconstruction: {state.one_line(exc)}")


@st.fragment(run_every=POLL_SECONDS)
def _watch(job) -> None:
    """Progress of the running job, redrawn every POLL_SECONDS without rerunning the page."""
    if not job.running:
        st.rerun()  # a full run draws the outcome (results or error) outside this fragment
    st.progress(job.fraction, text=f"Reconstructing {job.label}: {job.stage} ({job.elapsed:.0f} s)")
    if st.button("Cancel", key="recon_cancel"):
        job.cancel()
    if job.cancel_requested:
        st.caption("Cancelling: the job stops at its next progress step.")


def _results(ev, data, job) -> None:
    """The finished job's accuracy next to round-to-nearest of its plan, and its per-block error."""
    ws = ev.ws
    key = (state.data_key(state.settings(), data), str(ws.device))
    try:
        with progress("Evaluating the reconstructed model") as cb:
            if key not in job.evaluations:
                with ws.evaluator.private_model() as model:
                    job.evaluations[key] = evaluate_quantized(model, job.result.layers, data, str(ws.device), cb)
            nearest = ev.evaluate_plan(job.plan, data)
    except state.USER_ERRORS as exc:
        st.error(f"Cannot evaluate the reconstructed model: {state.one_line(exc)}")
        return
    learned, result, cfg = job.evaluations[key], job.result, job.result.config
    st.markdown(f"**Reconstructed {job.label}** ({job.plan.size['avg_bits']:.2f} average bits) on {learned.images} images:")
    c = st.columns(3)
    c[0].metric("Reconstructed top-1", f"{learned.top1:.2f} %", delta=f"{learned.top1 - nearest.top1:+.2f} vs nearest")
    c[1].metric("Reconstructed top-5", f"{learned.top5:.2f} %", delta=f"{learned.top5 - nearest.top5:+.2f} vs nearest")
    c[2].metric("Reconstructed loss", f"{learned.loss:.4f}", delta=f"{learned.loss - nearest.loss:+.4f} vs nearest",
                delta_color="inverse")
    st.caption(f"Round-to-nearest of the same plan ({job.plan.quantizer} quantizer): top-1 {nearest.top1:.2f} %, "
               f"top-5 {nearest.top5:.2f} %, loss {nearest.loss:.4f}.")
    work = f"{cfg.iters} iteration{'s' if cfg.iters != 1 else ''} per block"
    work = {"gptq": "GPTQ", "gptq+brecq": f"GPTQ, then {work}"}.get(cfg.method, work)
    st.caption(f"{work} over {len(result.blocks)} blocks, "
               f"{result.calib_images} calibration "
               f"images, batch {cfg.batch_size}, seed {cfg.seed}, {cfg.scheme} base quantizer, on {cfg.device}: "
               f"{result.seconds:.1f} s. The Export page offers the reconstructed model file.")
    for line in result.notes:
        st.caption(f"Note: {line}.")
    st.plotly_chart(block_error_figure(result.blocks), key="recon_block_chart")
    st.dataframe(pd.DataFrame([{"block": b.name, "layers": len(b.layers), "error, nearest": b.mse_nearest,
                                "error, learned": b.mse_learned,
                                "change %": 100.0 * (b.mse_learned - b.mse_nearest) / b.mse_nearest if b.mse_nearest else 0.0,
                                "seconds": b.seconds} for b in result.blocks]),
                 hide_index=True, key="recon_block_table",
                 column_config={"error, nearest": st.column_config.NumberColumn(format="%.3e"),
                                "error, learned": st.column_config.NumberColumn(format="%.3e"),
                                "change %": st.column_config.NumberColumn(format="%+.1f"),
                                "seconds": st.column_config.NumberColumn(format="%.2f")})
