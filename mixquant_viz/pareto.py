"""The Pareto view as a pure function: compared rows in, plotly figure out (no UI imports).

Each point carries its row index in ``customdata[0]`` so a page can map a clicked or selected point
back to ``rows[i]`` and export that plan with ``compare.plan_for``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import plotly.graph_objects as go

from mixquant_core.evaluations import PlanRow
from mixquant_core.studies.compare import METHODS

from .figures import interval_bars

STYLE = {  # method -> (legend name, marker symbol, colour)
    "uniform": ("uniform bits", "square", "#7f7f7f"),
    "mixquant": ("MixQuant QEM rule", "circle", "#1f77b4"),
    "budget-qe": ("budgeted, plain QE", "diamond", "#ff7f0e"),
    "budget-fisher": ("budgeted, Fisher-weighted", "triangle-up", "#2ca02c"),
}
HOVER = ("%{meta}<br>%{x:.3f} MB, %{customdata[1]:.2f} average bits<br>top-1 %{y:.2f} %<br>"
         "budget %{customdata[2]}<br>bit-widths %{customdata[3]}<extra></extra>")


def _custom(i: int, row: PlanRow) -> list:
    budget = "N/A" if row.target is None or row.method == "uniform" else f"{row.target:g} average bits"
    return [i, row.avg_bits, budget, row.bit_set]


def pareto_figure(rows: Sequence[PlanRow], selected: Optional[int] = None, title: Optional[str] = None) -> go.Figure:
    """Top-1 against model size, one trace per method, the non-dominated points ringed and joined.

    The float32 model is drawn as a dashed reference line (its point would sit far to the right).
    ``selected`` is an index into ``rows`` to highlight.
    """
    fig = go.Figure()
    indexed = list(enumerate(rows))
    for method in [m for m in METHODS if any(r.method == m for r in rows)]:
        pts = sorted(((i, r) for i, r in indexed if r.method == method), key=lambda p: p[1].size_mb)
        name, symbol, colour = STYLE[method]
        fig.add_trace(go.Scatter(
            x=[r.size_mb for _, r in pts], y=[r.top1 for _, r in pts], mode="lines+markers", name=name,
            meta=name, marker=dict(symbol=symbol, size=9, color=colour), line=dict(color=colour, width=1),
            error_y=interval_bars([r.to_dict() for _, r in pts], "top1"),  # 95 % intervals, when the rows carry them
            customdata=[_custom(i, r) for i, r in pts], hovertemplate=HOVER))
    front = sorted(((i, r) for i, r in indexed if r.pareto and r.bits is not None), key=lambda p: p[1].size_mb)
    if front:
        fig.add_trace(go.Scatter(
            x=[r.size_mb for _, r in front], y=[r.top1 for _, r in front], mode="lines+markers",
            name="Pareto front", meta="Pareto front", line=dict(color="black", width=1, dash="dot", shape="hv"),
            marker=dict(symbol="circle-open", size=16, color="black", line=dict(width=2)),
            customdata=[_custom(i, r) for i, r in front], hovertemplate=HOVER))
    if selected is not None and 0 <= selected < len(rows) and rows[selected].bits is not None:
        r = rows[selected]
        fig.add_trace(go.Scatter(x=[r.size_mb], y=[r.top1], mode="markers", name="selected", meta="selected",
                                 marker=dict(symbol="star", size=20, color="#d62728"),
                                 customdata=[_custom(selected, r)], hovertemplate=HOVER))
    reference = next((r for r in rows if r.method == "float32"), None)
    if reference is not None:
        fig.add_hline(y=reference.top1, line=dict(color="#888", dash="dash"),
                      annotation_text=f"float32 {reference.top1:.2f} % ({reference.size_mb:.1f} MB)",
                      annotation_position="bottom right")
    fig.update_layout(title=title or "Accuracy against model size", xaxis_title="model size (MB)",
                      yaxis_title="top-1 (%)", legend=dict(orientation="h", y=-0.2), hovermode="closest",
                      margin=dict(l=60, r=20, t=50, b=80))
    return fig
