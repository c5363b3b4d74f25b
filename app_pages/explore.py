"""Explore: the QE table as a heatmap, the QEM slider, and the plan it gives with its size.

Moving the slider only runs equation (1) on the cached QE table (microseconds) and redraws the
plan view (a fragment): no weights are touched, so it feels instant.
"""
import pandas as pd
import streamlit as st

from mixquant_viz import figures
from mixquant_core.plans.size import params_per_bits
from studio_ui import sidebar, state, workspaces

SLIDER_LABEL = "QEM (quantization error multiplier, log scale)"

sidebar.render()
st.title("Explore")
ws = workspaces.require_workspace()
s = state.settings()
table = workspaces.require_table(ws)
family = ws.family()
options = state.qem_options(family.qems, extra=[state.current_qem()])


@st.fragment
def plan_view() -> None:
    """The slider and everything it drives. A fragment: moving the slider reruns only this part,
    not the sidebar, the model/QE-table cache look-ups or the heatmap below."""
    # The QEM lives in session_state["qem"] (shared by every page); the slider mirrors it.
    st.session_state["qem_slider"] = state.snap_qem(options, state.current_qem())
    st.select_slider(
        SLIDER_LABEL, options=options, key="qem_slider", format_func=lambda q: f"{q:.5g}",
        on_change=lambda: state.set_qem(st.session_state["qem_slider"], "slider"),
        help="Each layer gets the lowest bit-width whose QE is at most QEM x its 8-bit QE. "
             "QEM 1 keeps everything at 8 bits; the plan only changes at the breakpoints marked below.",
    )
    qem = state.current_qem()
    bits = ws.bits_for([qem])[0]
    size = ws.size(bits)
    plan_index = family.index_for(qem)
    st.caption(f"QEM {qem:.5g} gives plan {plan_index + 1} of {len(family)} distinct plans "
               f"(it holds from QEM {family.qems[plan_index]:.5g}"
               + (f" up to {family.qems[plan_index + 1]:.5g})." if plan_index + 1 < len(family) else " upwards).")
               + ("" if st.session_state.get("qem_source", "slider") == "slider" else
                  f" Set from the {st.session_state['qem_source']} page."))

    m = st.columns(4)
    m[0].metric("float32", f"{size.float32_mb:.2f} MB")
    m[1].metric("Plan", f"{size.plan_mb:.2f} MB", delta=f"{size.plan_mb - size.float32_mb:.2f} MB", delta_color="inverse")
    m[2].metric("Compression", f"{size.compression:.2f}x")
    m[3].metric("Average bits", f"{size.avg_bits:.2f}")

    avg_bits, plan_mb = workspaces.family_sizes(s.workspace_key, ws)
    st.plotly_chart(figures.qem_family(family.qems, avg_bits, plan_mb, qem, options[-1]), key="family_chart")

    left, right = st.columns([2, 1])
    left.plotly_chart(figures.plan_bits_bar(ws.layers, bits, ws.pinned), key="plan_chart")
    right.plotly_chart(figures.size_bars(size), key="size_chart")
    right.plotly_chart(figures.params_per_bits_bar(params_per_bits(ws.layers, bits)), key="params_chart")

    st.subheader("Plan")
    col = {b: j for j, b in enumerate(table.bits)}
    st.dataframe(pd.DataFrame({
        "layer": table.names, "kind": [l.kind for l in ws.layers], "params": table.params,
        "bits": bits, "QE": [table.qe[i, col[int(b)]] for i, b in enumerate(bits)],
        "RQE": [table.rqe[i, col[int(b)]] for i, b in enumerate(bits)], "pinned at 8": ws.pinned,
    }), hide_index=True, column_config={"QE": st.column_config.NumberColumn(format="%.3e"),
                                        "RQE": st.column_config.NumberColumn(format="%.3e")})


plan_view()

st.subheader("QE table")
st.plotly_chart(figures.qe_heatmap(table), key="qe_heatmap")
