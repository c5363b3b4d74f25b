"""The Trade-off page's "Pick a plan": the smallest QEM plan within an allowed top-1 drop.

The search is mixquant_core.studies.target.smallest_within_drop (the CLI's `search --max-drop`);
this module reads the widgets, runs it, and says how sure the answer is.
"""
from __future__ import annotations

import streamlit as st

from mixquant_core.studies.target import smallest_within_drop

from . import state
from .progress import progress


def render(ev, data, f32) -> None:
    st.subheader("Pick a plan")
    st.caption("The smallest plan of the QEM rule whose top-1 stays within the allowed drop from float32, found by "
               "bisection over every distinct plan (ordered by size), each evaluated once on the same images as float32.")
    state.persist(max_drop=1.0, target_confident=False)
    left, right = st.columns(2)
    max_drop = left.number_input("Allowed top-1 drop from float32 (points)", min_value=0.0, max_value=100.0, step=0.5,
                                 key="max_drop")
    confident = right.checkbox("Only if sure (the 95 % upper bound of the drop must be within it)", key="target_confident")
    key = ("target", state.settings().workspace_key, state.data_key(state.settings(), data), float(max_drop),
           bool(confident), ev.early_stop)
    found = st.session_state.setdefault("targets", {})
    if st.button("Find the smallest plan", key="find_target"):
        try:
            with progress("Bisection over the QEM plans") as cb:
                found[key] = smallest_within_drop(ev, data, float(max_drop), "qem", bool(confident), progress=cb)
        except state.USER_ERRORS as exc:
            st.error(f"Search failed: {state.one_line(exc)}")
    result = found.get(key)
    if result is None:
        return
    if not result.found:
        st.warning(result.certainty())
        return
    m, size = result.metrics, result.size
    st.success(f"Smallest plan within {max_drop:g} points: QEM {result.qem:.4g}, top-1 {m.top1:.2f} % "
               f"({m.top1 - f32.top1:+.2f}), {size.plan_mb:.2f} MB ({size.compression:.2f}x), "
               f"{size.avg_bits:.2f} average bits; {result.evaluated} of {result.candidates} distinct plans evaluated.")
    sure = -result.difference.ci[0] <= result.max_drop
    (st.info if sure else st.warning)(result.certainty())
    if st.button(f"Use QEM {result.qem:.5g} everywhere", key="use_target_qem"):
        state.set_qem(result.qem, "Trade-off")
        st.success(f"QEM {result.qem:.5g} is now used on every page.")
