"""The Trade-off page's Pareto section: uniform, MixQuant-QEM and budgeted plans on one size axis.

The comparison itself is mixquant_core.studies.compare.compare (the CLI's `sweep --compare`); this module
only reads widgets, calls it, draws pareto_figure and offers the chosen point's plan.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from mixquant_core.data.image_sets import default_calib_dir
from mixquant_core.studies.compare import DEFAULT_TARGETS, METHODS, compare, plan_for
from mixquant_viz.pareto import pareto_figure

from . import eval_sets, state
from .progress import progress


def render(ev, data) -> None:
    ws = ev.ws
    st.subheader("Which allocation wins: the Pareto view")
    st.caption("The QEM rule gives almost every layer the same bit-width until the bits are low. Budgeted "
               "allocation spends a size budget where it costs least (plain QE or Fisher-weighted error). "
               "Each method's plan at the same average-bit budgets, evaluated on the same images; "
               "points on the Pareto front of size vs top-1 are outlined.")
    state.persist(pareto_methods=list(METHODS), pareto_targets=list(DEFAULT_TARGETS),
                  calib_dir=default_calib_dir() or "", calib_images=64)
    left, right = st.columns(2)
    methods = left.multiselect("Methods", list(METHODS), key="pareto_methods", format_func=lambda m: f"{m}: {METHODS[m]}")
    targets = right.multiselect("Average-bit budgets", [8.0, 7.0, 6.5, 6.0, 5.5, 5.0, 4.5, 4.0, 3.5, 3.0, 2.5],
                                key="pareto_targets")
    calib_dir = left.text_input("Calibration folder (for budget-fisher)", key="calib_dir",
                                help="Labelled like the evaluation set, or plain images (the model's own predictions "
                                     "are then the labels). Default: $MIXQUANT_DATA/imagenet-calib-1000.")
    calib_n = right.number_input("Calibration images", min_value=4, max_value=1024, step=16, key="calib_images")
    key = ("pareto", state.settings().workspace_key, state.data_key(state.settings(), data),
           tuple(methods), tuple(sorted(targets, reverse=True)), calib_dir, int(calib_n))
    results = st.session_state.setdefault("pareto_results", {})
    if st.button("Compare allocations", key="run_pareto"):
        if not methods or not targets:
            st.error("Choose at least one method and one average-bit budget.")
        else:
            calib = None
            if "budget-fisher" in methods:
                calib = eval_sets.calib_tensors(ws, calib_dir.strip(), int(calib_n)) if calib_dir.strip() else None
                if calib is None and not calib_dir.strip():
                    st.error("budget-fisher needs a calibration folder (or leave that method out).")
            if calib is not None or "budget-fisher" not in methods:
                try:
                    with progress("Comparing allocations") as cb:
                        results[key] = compare(ev, data, targets, methods, calib, progress=cb)
                except state.USER_ERRORS as exc:
                    st.error(f"Comparison failed: {state.one_line(exc)}")
    rows = results.get(key)
    if rows is None:
        st.info("Press **Compare allocations** to evaluate every method's plan (each distinct plan once; "
                "plans already evaluated above are reused).")
        return
    chosen = st.session_state.get("pareto_point")
    event = st.plotly_chart(pareto_figure(rows, selected=chosen), key="pareto_chart", on_select="rerun",
                            selection_mode="points")
    points = event.selection.points if event else []  # a click on a point selects it for export
    if points and points[0].get("customdata") is not None:
        st.session_state["pareto_point"] = chosen = int(points[0]["customdata"][0])
    index_of = {f"{r.method} @ {r.target:g} bits: top-1 {r.top1:.2f} %, {r.size_mb:.2f} MB" + (" (Pareto)" if r.pareto else ""): i
                for i, r in enumerate(rows) if r.bits is not None}
    if not index_of:
        return
    labels = list(index_of)
    default = next((k for k, label in enumerate(labels) if index_of[label] == chosen), 0)
    pick = index_of[st.selectbox("Point to export", labels, index=default, key="pareto_pick")]
    plan = plan_for(ws, rows[pick])
    st.caption(f"{rows[pick].method} plan for a {rows[pick].target:g} average bits budget: "
               f"{plan.size['avg_bits']:.2f} bits, {plan.size['plan_mb']:.2f} MB, top-1 {rows[pick].top1:.2f} %.")
    st.download_button("Download this point's plan (JSON)", plan.to_json(), mime="application/json",
                       file_name=f"{ws.loaded.name}-{rows[pick].method}-{rows[pick].target:g}bits-plan.json",
                       on_click="ignore", key="pareto_plan_json")
    frame = pd.DataFrame([r.to_flat_dict() for r in rows]).rename(columns={
        "target": "budget (avg bits)", "top1": "top-1 %", "top5": "top-5 %", "avg_bits": "avg bits",
        "size_mb": "size MB", "compression": "compression x", "bit_set": "bit-widths", "top1_lo": "top-1 low",
        "top1_hi": "top-1 high", "delta_top1": "Δ top-1 vs float32", "p_value": "p (McNemar)"})
    st.dataframe(frame, hide_index=True)
