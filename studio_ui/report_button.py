"""The Trade-off page's "Download report": the same offline HTML as `mixquant report`."""
from __future__ import annotations

import html

import streamlit as st

from mixquant_viz.report import report_html

from . import state


def render(ws, data, rows) -> None:
    """Offer the report of this sweep, with the last "Pick a plan" answer for these images as the chosen plan.

    The file (a few MB: plotly.js is inside) is built only when the button is clicked, not on every run."""
    targets = st.session_state.get("targets", {})
    here = (state.settings().workspace_key, state.data_key(state.settings(), data))
    target = next((r for k, r in reversed(list(targets.items())) if k[1:3] == here), None)

    def build() -> str:
        try:
            return report_html(ws, data, rows, target)
        except state.USER_ERRORS as exc:  # the callable runs off the page: the file itself says what failed
            return f"<!DOCTYPE html><html><body><p>Cannot build the report: {html.escape(state.one_line(exc))}</p></body></html>"

    st.download_button("Download report (HTML, works offline)", build, file_name=f"{ws.loaded.name}-mixquant-report.html",
                       mime="text/html", on_click="ignore", key="report_html",
                       help="Model, QE heatmap, accuracy against QEM and size with 95 % intervals, the plan chosen "
                            "under \"Pick a plan\" and how the numbers were measured, in one file.")
