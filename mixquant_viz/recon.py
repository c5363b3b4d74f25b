"""Figure of a reconstruction's per-block error, a pure function like plots.py (no Streamlit)."""
from __future__ import annotations

from typing import Mapping, Sequence

import plotly.graph_objects as go

NEAREST_COLOR, LEARNED_COLOR = "#7f7f7f", "#1f77b4"


def _block(b) -> dict:
    return dict(b) if isinstance(b, Mapping) else dict(b.__dict__)


def block_error_figure(blocks: Sequence) -> go.Figure:
    """Each block's output error (BlockReport or its dict) with round-to-nearest and with the learned
    rounding, side by side in model order; log y, since the error spans decades from stem to head."""
    data = [_block(b) for b in blocks]
    names = [b["name"] for b in data]
    fig = go.Figure()
    for label, field, color in (("round-to-nearest", "mse_nearest", NEAREST_COLOR),
                                ("learned rounding", "mse_learned", LEARNED_COLOR)):
        fig.add_trace(go.Bar(
            x=names, y=[b[field] for b in data], name=label, marker_color=color,
            customdata=[[len(b["layers"])] for b in data],
            hovertemplate=f"<b>%{{x}}</b> ({label})<br>block output error %{{y:.3e}}"
                          "<br>%{customdata[0]} quantized layers<extra></extra>",
        ))
    fig.update_xaxes(title="block (model order)")
    fig.update_yaxes(type="log", title="block output error")
    fig.update_layout(title="Block output error before and after reconstruction", barmode="group", height=380,
                      margin=dict(l=10, r=10, t=60, b=10), legend=dict(orientation="h", y=1.02, x=0, yanchor="bottom"))
    return fig
