"""Sensitivity (paper section 6): one layer kind at a time at b bits, the layer with the highest RQE,
and (issue #20) each layer's input alone at 8 bits."""
import pandas as pd
import streamlit as st

from mixquant_viz import figures
from mixquant_core.studies.act_sensitivity import act_sensitivity
from mixquant_core.studies.kind_sensitivity import kind_sensitivity, kinds_present, most_sensitive_by_rqe
from studio_ui import eval_sets, sidebar, state, workspaces
from studio_ui.progress import attempt, progress

sidebar.render()
st.title("Sensitivity")
ws = workspaces.require_workspace()
s = state.settings()
table = workspaces.require_table(ws)

st.subheader("One layer kind at a time")
st.caption("Only the layers of one kind go to b bits; every other layer stays at 8 bits.")
present = kinds_present(ws.layers)
low_bits = [b for b in table.bits if b != 8]
c1, c2 = st.columns(2)
state.persist(sens_kinds=present, sens_bits=[b for b in low_bits if b in (6, 4, 2)] or low_bits[:1])
# another model or candidate set may lack what was chosen before
st.session_state["sens_kinds"] = [k for k in st.session_state["sens_kinds"] if k in present]
st.session_state["sens_bits"] = [b for b in st.session_state["sens_bits"] if b in low_bits]
kinds = c1.multiselect("Layer kinds", present, key="sens_kinds")
bits = c2.multiselect("Bit-widths to test", low_bits, key="sens_bits")
data = eval_sets.eval_tensors(ws, s)
ev = state.evaluations(ws)  # no early stop here: every plan's full accuracy
results = st.session_state.setdefault("kind_sensitivity", {})
if data is not None and kinds and bits:
    key = (s.workspace_key, state.data_key(s, data), tuple(kinds), tuple(sorted(bits, reverse=True)))
    st.caption(f"{len(kinds) * len(bits)} plans on {len(data)} images.")
    if st.button("Evaluate sensitivity", type="primary", key="run_sensitivity"):
        try:
            with progress("Evaluating layer kinds") as cb:
                rows = kind_sensitivity(ev, data, bits, kinds, cb)
                refs = (ev.evaluate_bits(None, data).top1, ev.evaluate_bits(ws.uniform(8), data).top1)
            results[key] = (rows, refs)
        except state.USER_ERRORS as exc:
            st.error(f"Evaluation failed: {state.one_line(exc)}")
    if key in results:
        rows, (float_top1, int8_top1) = results[key]
        st.plotly_chart(figures.kind_sensitivity_figure(rows, int8_top1=int8_top1, float_top1=float_top1),
                        key="kind_chart")
        frame = pd.DataFrame([r.to_dict() for r in rows])
        frame["top-1 drop vs int8"] = frame["top1"] - int8_top1
        st.dataframe(frame, hide_index=True)
    else:
        st.info("Press **Evaluate sensitivity** to measure each kind at each bit-width.")
elif data is not None:
    st.info("Choose at least one layer kind and one bit-width.")

st.subheader("Most sensitive layer by RQE")
st.caption("RQE = QE / mean(w^2): the error relative to the layer's own weight energy (paper Table 4).")
top = most_sensitive_by_rqe(table)
st.plotly_chart(figures.most_sensitive_figure(top), key="rqe_chart")
st.dataframe(pd.DataFrame([t.to_dict() for t in top]), hide_index=True,
             column_config={"rqe": st.column_config.NumberColumn(format="%.3e"),
                            "qe": st.column_config.NumberColumn(format="%.3e")})

st.subheader("Activations, one layer at a time")
st.caption("Only one layer's input is quantized to 8 bits (its calibrated range; weights stay float32): the rise of "
           "the loss and the top-1 drop against float32 show which activations to keep float.")
if s.act_bits is None:
    st.info("Choose **8-bit** activations in the sidebar to calibrate the ranges and measure each layer's input.")
elif data is not None:
    act_results = st.session_state.setdefault("act_sensitivity", {})
    act_key = (s.workspace_key, state.data_key(s, data))
    if st.button("Evaluate activation sensitivity", key="run_act_sensitivity"):
        attempt("Evaluating layer inputs", "Evaluation", lambda cb: act_sensitivity(ev, data, progress=cb),
                act_results, act_key)
    if act_key in act_results:
        act_rows = act_results[act_key]
        st.plotly_chart(figures.act_sensitivity_figure(act_rows), key="act_chart")
        act_frame = pd.DataFrame([r.to_dict() for r in act_rows]).sort_values("loss_increase", ascending=False)
        st.dataframe(act_frame, hide_index=True)
    else:
        st.info(f"Press **Evaluate activation sensitivity** to measure each layer's input on {len(data)} images.")
