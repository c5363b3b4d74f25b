"""Trade-off: top-1/top-5 against QEM and against size on the evaluation subset (the paper's Table 2),
and reconstruction (AdaRound + BRECQ) of a plan in the background.

Evaluations.sweep evaluates each distinct plan once and caches its metrics (and keeps them in the
results store), so coming back, sweeping again with more points, or restarting the app only
evaluates plans not seen before; a sweep whose plans are all stored is shown without a click.
"""
import pandas as pd
import streamlit as st

from mixquant_core import default_qem_grid
from mixquant_core.evaluation.statistics import EarlyStop, describe_difference, within_noise
from mixquant_viz import figures
from mixquant_core.studies.latency import with_latency
from mixquant_core.studies.tradeoff import baseline, rows_to_csv
from studio_ui import eval_sets, pareto, recon_panel, report_button, sidebar, state, target_panel, workspaces
from studio_ui.progress import attempt, progress
from studio_ui.settings import TRADEOFF_STEPS

sidebar.render()
st.title("Trade-off")
ws = workspaces.require_workspace()
s = state.settings()
table = workspaces.require_table(ws)
data = eval_sets.eval_tensors(ws, s)
if data is None:
    st.stop()

state.persist(sweep_steps=TRADEOFF_STEPS, early_stop=True)
steps = st.number_input("QEM points to evaluate", min_value=2, max_value=60, key="sweep_steps",
                        help="Log-spaced from QEM 1 to where the last layer reaches its lowest bit-width.")
early = st.checkbox("Stop early on hopeless plans", key="early_stop",
                    help="A plan whose top-1 is surely below half of float32's stops being evaluated, with "
                         + EarlyStop.half_of(80.0, len(data)).describe().split(" with ", 1)[-1]
                         + ". Such plans are marked 'stopped early after N images'.")
qems = tuple(float(q) for q in default_qem_grid(table, int(steps)))
ev = state.evaluations(ws, early)  # this session's store and early stop, passed with every evaluation
key = (s.workspace_key, state.data_key(s, data), qems, early)
sweeps = st.session_state.setdefault("sweeps", {})
st.caption(f"{len(data)} images from the evaluation set; QEMs {qems[0]:.3g} to {qems[-1]:.4g}. "
           "Each distinct plan is evaluated once and kept in the results store.")

if st.button("Evaluate trade-off", type="primary", key="run_sweep"):
    try:
        with progress("Evaluating plans") as cb:
            sweeps[key] = ev.sweep(data, qems, cb)
    except state.USER_ERRORS as exc:
        st.error(f"Evaluation failed: {state.one_line(exc)}")
elif key not in sweeps and ev.store is not None:
    # every plan already measured (this run or an earlier one): show it, free
    if ev.has_results(ws.sweep_plans(qems)[2], data):
        sweeps[key] = ev.sweep(data, qems)
        st.session_state.setdefault("sweeps_from_store", set()).add(key)
rows = sweeps.get(key)
if rows is None:
    st.info("Press **Evaluate trade-off** to measure float32, int8 and every plan of the QEM grid on the subset.")
    recon_panel.render(ws, ev, data, [])  # reconstruction needs no sweep: it offers the current QEM's plan
    st.stop()
st.session_state["last_sweep"] = (s.workspace_key, rows)
if key in st.session_state.get("sweeps_from_store", ()):
    st.caption(f"Shown from the results store ({ev.store.path}): measured before, nothing evaluated again.")

f32, int8 = baseline(rows, "float32"), baseline(rows, "int8")
mq_rows = [r for r in rows if r.method == "mixquant"]
c = st.columns(4)
c[0].metric("float32 top-1", f"{f32.top1:.2f} %", help=f"95 % interval {f32.top1_ci[0]:.1f} to {f32.top1_ci[1]:.1f} %")
c[1].metric("int8 top-1", f"{int8.top1:.2f} %", delta=f"{int8.top1 - f32.top1:+.2f}",
            help=f"95 % interval {int8.top1_ci[0]:.1f} to {int8.top1_ci[1]:.1f} %")
c[2].metric("Distinct plans in the grid", len({tuple(b) for b in ws.bits_for(qems)}))
c[3].metric("QEM in use", f"{state.current_qem():.5g}")


def use_point(chart_key: str, curves: tuple) -> None:
    """A click on a MixQuant point (the traces in ``curves`` list mq_rows in order) sets the QEM everywhere."""
    points = st.session_state[chart_key].selection.get("points", [])
    mine = [p for p in points if p.get("curve_number") in curves and p.get("point_index") is not None]
    if mine:
        state.set_qem(mq_rows[mine[0]["point_index"]].qem, "Trade-off")


left, right = st.columns(2)
left.plotly_chart(figures.accuracy_vs_qem(rows), key="acc_qem_chart", on_select=lambda: use_point("acc_qem_chart", (0, 1)),
                  selection_mode="points")
right.plotly_chart(figures.accuracy_vs_size(rows), key="acc_size_chart", on_select=lambda: use_point("acc_size_chart", (0,)),
                   selection_mode="points")
st.caption("Click a point to use its QEM on every page. Bars: 95 % intervals; crosses: plans stopped early.")
half = (f32.top1_ci[1] - f32.top1_ci[0]) / 2
noisy = [r for r in mq_rows if within_noise(r.vs_float32)]
st.info(f"On {len(data)} images a top-1 near {f32.top1:.0f} % is known to about ±{half:.1f} points (95 %). "
        f"int8 vs float32: {describe_difference(ev.evaluate_bits(ws.uniform(8), data).versus(ev.evaluate_bits(None, data)))} "
        + (f"{len(noisy)} of {len(mq_rows)} QEM points are within noise of float32 (QEM "
           + ", ".join(f"{r.qem:.3g}" for r in noisy) + "): on these images they cannot be told apart from it."
           if noisy else "Every QEM point differs from float32 by more than noise."))

target_panel.render(ev, data, f32)

labels = {i: f"QEM {r.qem:.4g}: top-1 {r.top1:.2f} %, {r.size_mb:.2f} MB"
             + (f" (stopped early after {r.images} images)" if r.stopped_early else "") for i, r in enumerate(mq_rows)}
choice = st.selectbox("Or a plan of the sweep", list(labels), index=0, format_func=labels.get, key="plan_choice")
if st.button("Use this QEM everywhere", key="use_qem"):
    state.set_qem(mq_rows[choice].qem, "Trade-off")
    st.success(f"QEM {mq_rows[choice].qem:.5g} is now used on every page.")

state.persist(measure_latency=False)
if st.checkbox("Measure latency", key="measure_latency",
               help="Each plan's ONNX export (float32: the float graph) on ONNX Runtime's CPU provider on this "
                    "server: median ms per image at batch 1 after warm-up. A few seconds per plan, measured once."):
    timed = st.session_state.setdefault("latency_rows", {})
    if key not in timed:
        attempt("Measuring latency", "Latency measurement", lambda cb: with_latency(ws, rows, progress=cb), timed, key)
    if key in timed:
        rows = timed[key]
        st.plotly_chart(figures.accuracy_vs_latency(rows), key="acc_latency_chart")
        st.caption("Latency of the exported ONNX files as they are today, on this machine (its load included); "
                   "`mixquant bench` compares ONNX Runtime and OpenVINO at batch 1 and 32.")

st.subheader("Table")
frame = pd.DataFrame([r.to_flat_dict() for r in rows]).rename(columns={
    "qem": "QEM", "bit_set": "bit-widths", "top1": "top-1 %", "top5": "top-5 %", "quant_mse": "quant MSE",
    "avg_bits": "avg bits", "size_mb": "size MB", "compression": "compression x", "top1_lo": "top-1 low",
    "top1_hi": "top-1 high", "top5_lo": "top-5 low", "top5_hi": "top-5 high", "delta_top1": "Δ top-1 vs float32",
    "delta_lo": "Δ low", "delta_hi": "Δ high", "p_value": "p (McNemar)", "latency_ms": "ms/image (batch 1)"})
frame["note"] = [f"stopped early after {r.images} images" if r.stopped_early else
                 ("within noise" if within_noise(r.vs_float32) else "")
                 for r in rows]
st.dataframe(frame, hide_index=True, column_config={
    "quant MSE": st.column_config.NumberColumn(format="%.3e"), "p (McNemar)": st.column_config.NumberColumn(format="%.2g"),
    **{c: st.column_config.NumberColumn(format="%.1f") for c in ("top-1 low", "top-1 high", "top-5 low", "top-5 high",
                                                                   "Δ low", "Δ high")}})
st.download_button("Download table (CSV)", rows_to_csv(rows), file_name=f"{ws.loaded.name}-tradeoff.csv",
                   mime="text/csv", on_click="ignore", key="tradeoff_csv")

report_button.render(ws, data, rows)
pareto.render(ev, data)
recon_panel.render(ws, ev, data, mq_rows)
