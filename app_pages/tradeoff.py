"""Trade-off: top-1/top-5 against QEM and against size on the evaluation subset (the paper's Table 2),
and reconstruction (AdaRound + BRECQ) of a plan in the background.

Workspace.sweep evaluates each distinct plan once and caches its metrics, so coming back, or
sweeping again with more points, only evaluates plans not seen before.
"""
import pandas as pd
import streamlit as st

from mixquant_core import default_qem_grid
from mixquant_viz import figures
from mixquant_core.studies.tradeoff import baseline, rows_to_csv, smallest_within
from studio_ui import pareto, recon_panel, sidebar, state

sidebar.render()
st.title("Trade-off")
ws = state.require_workspace()
s = state.settings()
table = state.require_table(ws)
data = state.eval_tensors(ws, s)
if data is None:
    st.stop()

state.persist(sweep_steps=12, max_drop=1.0)
steps = st.number_input("QEM points to evaluate", min_value=2, max_value=60, key="sweep_steps",
                        help="Log-spaced from QEM 1 to where the last layer reaches its lowest bit-width.")
qems = tuple(float(q) for q in default_qem_grid(table, int(steps)))
key = (s.workspace_key, state.data_key(s, data), qems)
sweeps = st.session_state.setdefault("sweeps", {})
st.caption(f"{len(data)} images from the evaluation set; QEMs {qems[0]:.3g} to {qems[-1]:.4g}. "
           "Each distinct plan is evaluated once and remembered.")

if st.button("Evaluate trade-off", type="primary", key="run_sweep"):
    try:
        with state.progress("Evaluating plans") as cb:
            sweeps[key] = ws.sweep(data, qems, cb)
    except state.USER_ERRORS as exc:
        st.error(f"Evaluation failed: {state.one_line(exc)}")
rows = sweeps.get(key)
if rows is None:
    st.info("Press **Evaluate trade-off** to measure float32, int8 and every plan of the QEM grid on the subset.")
    recon_panel.render(ws, data, [])  # reconstruction needs no sweep: it offers the current QEM's plan
    st.stop()
st.session_state["last_sweep"] = (s.workspace_key, rows)

f32, int8 = baseline(rows, "float32"), baseline(rows, "int8")
mq_rows = [r for r in rows if r.method == "mixquant"]
c = st.columns(4)
c[0].metric("float32 top-1", f"{f32.top1:.2f} %")
c[1].metric("int8 top-1", f"{int8.top1:.2f} %", delta=f"{int8.top1 - f32.top1:+.2f}")
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
st.caption("Click a point to use its QEM on every page.")

st.subheader("Pick a plan")
max_drop = st.number_input("Allowed top-1 drop from float32 (points)", min_value=0.0, max_value=100.0, step=0.5,
                           key="max_drop")
best = smallest_within(rows, max_drop)
if best is None:
    st.warning(f"No evaluated plan stays within {max_drop:g} points of float32's top-1 ({f32.top1:.2f} %); "
               "allow a larger drop or evaluate more QEM points.")
else:
    st.success(f"Smallest plan within {max_drop:g} points: QEM {best.qem:.4g}, top-1 {best.top1:.2f} % "
               f"({best.top1 - f32.top1:+.2f}), {best.size_mb:.2f} MB ({best.compression:.2f}x), "
               f"{best.avg_bits:.2f} average bits.")
labels = {i: f"QEM {r.qem:.4g}: top-1 {r.top1:.2f} %, {r.size_mb:.2f} MB" for i, r in enumerate(mq_rows)}
default = mq_rows.index(best) if best is not None else 0
choice = st.selectbox("Plan to use", list(labels), index=default, format_func=labels.get, key=f"plan_choice_{default}")
if st.button("Use this QEM everywhere", key="use_qem"):
    state.set_qem(mq_rows[choice].qem, "Trade-off")
    st.success(f"QEM {mq_rows[choice].qem:.5g} is now used on every page.")

st.subheader("Table")
frame = pd.DataFrame([r.to_dict() for r in rows]).rename(columns={
    "qem": "QEM", "bit_set": "bit-widths", "top1": "top-1 %", "top5": "top-5 %", "quant_mse": "quant MSE",
    "avg_bits": "avg bits", "size_mb": "size MB", "compression": "compression x"})
st.dataframe(frame, hide_index=True, column_config={"quant MSE": st.column_config.NumberColumn(format="%.3e")})
st.download_button("Download table (CSV)", rows_to_csv(rows), file_name=f"{ws.loaded.name}-tradeoff.csv",
                   mime="text/csv", on_click="ignore", key="tradeoff_csv")

pareto.render(ws, data)
recon_panel.render(ws, data, mq_rows)
