"""The dashboard's figures as pure functions: data in, plotly figure out.

No Streamlit here, so every figure can be built and checked in a test (or saved from a script).
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import plotly.graph_objects as go

from mixquant_core.evaluation.statistics import within_noise
from mixquant_core.models.layers import KINDS, LayerInfo
from mixquant_core.quant.qe import QETable
from mixquant_core.plans.size import SizeSummary

# One colour per layer kind, shared by every figure so a kind reads the same everywhere.
KIND_COLORS = {"first_conv": "#d62728", "kxk_conv": "#ff7f0e", "1x1_conv": "#1f77b4",
               "depthwise": "#2ca02c", "fc": "#9467bd",
               "patch_embed": "#843c39", "attn_qkv": "#e377c2", "attn_out": "#17becf",
               "mlp_in": "#bcbd22", "mlp_out": "#637939", "head": "#393b79"}
REFERENCE_STYLE = {"float32": dict(color="#444444", dash="dash"), "int8": dict(color="#8c564b", dash="dot")}
# float32 labelled above its line, int8 below, so the two labels never overprint each other
REFERENCE_LABEL = {"float32": "top left", "int8": "bottom right"}


def _row(r) -> dict:
    return r if isinstance(r, Mapping) else r.to_dict()


def qe_heatmap(table: QETable) -> go.Figure:
    """Layers (model order, top to bottom) x bit-widths, coloured by log10 QE."""
    qe, rqe = table.qe, table.rqe
    with np.errstate(divide="ignore"):
        z = np.where(qe > 0, np.log10(np.where(qe > 0, qe, 1.0)), np.nan)  # QE 0 (exact) has no log: blank
    kinds = np.array([[layer.kind] * len(table.bits) for layer in table.layers], dtype=object)
    params = np.array([[layer.params] * len(table.bits) for layer in table.layers], dtype=object)
    custom = np.stack([kinds, params, qe.astype(object), rqe.astype(object)], axis=-1)
    finite = z[np.isfinite(z)]
    lo, hi = (math.floor(finite.min()), math.ceil(finite.max())) if finite.size else (0, 1)
    ticks = list(range(lo, hi + 1))
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"{b} bit" for b in table.bits], y=table.names, customdata=custom,
        colorscale="Viridis", zmin=lo, zmax=hi,
        colorbar=dict(title="QE", tickvals=ticks, ticktext=[f"1e{t}" for t in ticks]),
        hovertemplate=("<b>%{y}</b><br>kind %{customdata[0]}<br>params %{customdata[1]:,}<br>%{x}"
                       "<br>QE %{customdata[2]:.3e}<br>RQE %{customdata[3]:.3e}<extra></extra>"),
    ))
    fig.update_yaxes(autorange="reversed", title="layer (model order)", tickfont=dict(size=9))
    fig.update_xaxes(title="bit-width", side="top")
    fig.update_layout(title="Quantization error per layer and bit-width (log colour scale)",
                      height=max(420, 14 * len(table.layers) + 160), margin=dict(l=10, r=10, t=90, b=10))
    return fig


def plan_bits_bar(layers: Sequence[LayerInfo], bits: Sequence[int], pinned: Optional[Sequence[bool]] = None) -> go.Figure:
    """Bit-width of every layer in model order, one colour per layer kind."""
    names = [layer.name for layer in layers]
    pinned = list(pinned) if pinned is not None else [False] * len(layers)
    fig = go.Figure()
    for kind in KINDS:
        idx = [i for i, layer in enumerate(layers) if layer.kind == kind]
        if not idx:
            continue
        fig.add_trace(go.Bar(
            x=[names[i] for i in idx], y=[int(bits[i]) for i in idx], name=kind, marker_color=KIND_COLORS[kind],
            customdata=[[layers[i].params, "pinned at 8 bits" if pinned[i] else ""] for i in idx],
            hovertemplate="<b>%{x}</b><br>%{y} bits<br>params %{customdata[0]:,}<br>%{customdata[1]}<extra></extra>",
        ))
    fig.update_xaxes(categoryorder="array", categoryarray=names, showticklabels=len(names) <= 40,
                     tickfont=dict(size=8), title="layer (model order)")
    fig.update_yaxes(range=[0, 8.5], dtick=1, title="bits")
    avg = float(np.average(np.asarray(bits, dtype=float), weights=[layer.params for layer in layers])) if layers else 0.0
    fig.update_layout(title=f"Bit-width per layer (average {avg:.2f} bits, weighted by parameters)",
                      height=420, bargap=0.15, margin=dict(l=10, r=10, t=60, b=10))
    return fig


def size_bars(size: SizeSummary) -> go.Figure:
    """float32 size next to the plan's size, in MB."""
    fig = go.Figure(go.Bar(
        x=["float32", "plan"], y=[size.float32_mb, size.plan_mb], marker_color=["#7f7f7f", "#1f77b4"],
        text=[f"{size.float32_mb:.2f} MB", f"{size.plan_mb:.2f} MB"], textposition="outside",
        hovertemplate="%{x}: %{y:.3f} MB<extra></extra>",
    ))
    fig.update_yaxes(title="MB", range=[0, size.float32_mb * 1.18])
    fig.update_layout(title=f"Model size: {size.compression:.2f}x smaller", height=360, margin=dict(l=10, r=10, t=60, b=10))
    return fig


def params_per_bits_bar(counts: Dict[int, int]) -> go.Figure:
    """How many weights end up at each bit-width."""
    bits = sorted(counts, reverse=True)
    total = sum(counts.values()) or 1
    fig = go.Figure(go.Bar(
        x=[f"{b} bit" for b in bits], y=[counts[b] for b in bits], marker_color="#2ca02c",
        text=[f"{100 * counts[b] / total:.1f} %" for b in bits], textposition="outside",
        hovertemplate="%{x}: %{y:,} parameters<extra></extra>",
    ))
    fig.update_yaxes(title="parameters")
    fig.update_layout(title="Parameters per bit-width", height=360, margin=dict(l=10, r=10, t=60, b=10))
    return fig


def qem_family(qems: Sequence[float], avg_bits: Sequence[float], size_mb: Sequence[float],
               qem: Optional[float] = None, qem_max: Optional[float] = None) -> go.Figure:
    """Average bits as a step function of QEM (log x), every breakpoint marked, the chosen QEM as a line.

    ``qems[i]`` is where plan i starts (Workspace.family()); the plan holds until the next one.
    """
    qems = np.asarray(qems, dtype=float)
    x_end = float(qem_max) if qem_max else float(qems[-1]) * 1.2
    x = np.append(qems, max(x_end, float(qems[-1])))
    y = np.append(np.asarray(avg_bits, dtype=float), avg_bits[-1])
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line_shape="hv", name="average bits",
                             line=dict(color="#1f77b4"), hoverinfo="skip"))
    fig.add_trace(go.Scatter(
        x=qems, y=avg_bits, mode="markers", name=f"breakpoints ({len(qems)} plans)",
        marker=dict(symbol="line-ns-open", size=10, color="#d62728"), customdata=np.asarray(size_mb, dtype=float),
        hovertemplate="plan from QEM %{x:.5g}<br>%{y:.3f} average bits<br>%{customdata:.2f} MB<extra></extra>",
    ))
    if qem is not None:
        # a trace, not add_vline: shape annotations on a log axis take log10 positions and stretch the axis
        lo, hi = float(np.min(avg_bits)), float(np.max(avg_bits))
        fig.add_trace(go.Scatter(x=[float(qem), float(qem)], y=[lo - 0.3, hi + 0.3], mode="lines",
                                 name=f"QEM {float(qem):.4g}", line=dict(color="#ff7f0e", width=2),
                                 hovertemplate=f"chosen QEM {float(qem):.5g}<extra></extra>"))
    fig.update_xaxes(type="log", title="QEM (log scale)", range=[-0.05, math.log10(max(x_end, 1.5)) + 0.05])
    fig.update_yaxes(title="average bits")
    fig.update_layout(title="Every distinct plan: where the bit-widths change", height=320,
                      margin=dict(l=10, r=10, t=60, b=10), legend=dict(orientation="h", y=-0.3))
    return fig


def _references(fig: go.Figure, rows, metric: str) -> None:
    for method in ("float32", "int8"):
        ref = next((_row(r) for r in rows if _row(r)["method"] == method), None)
        if ref is not None:
            fig.add_hline(y=ref[metric], line=REFERENCE_STYLE[method],
                          annotation_text=f"{method} {metric.replace('top', 'top-')} {ref[metric]:.1f} %",
                          annotation_position=REFERENCE_LABEL[method])


def interval_bars(rows: Sequence[Mapping], metric: str) -> Optional[dict]:
    """Plotly error bars from each row's 95 % interval (``{metric}_ci``); None when rows carry none."""
    cis = [r.get(f"{metric}_ci") for r in rows]
    if not rows or any(ci is None for ci in cis):
        return None
    return dict(type="data", symmetric=False, array=[ci[1] - r[metric] for r, ci in zip(rows, cis)],
                arrayminus=[r[metric] - ci[0] for r, ci in zip(rows, cis)], thickness=1.2, width=3)


def _noise_note(r: Mapping) -> str:
    """Hover line: the 95 % interval, the paired difference with float32, an early stop."""
    parts = []
    if r.get("top1_ci"):
        parts.append(f"top-1 95 % interval {r['top1_ci'][0]:.1f} to {r['top1_ci'][1]:.1f} %")
    vs = r.get("vs_float32")
    if vs:
        lo, hi = vs["delta_ci"]
        verdict = "within noise" if within_noise(vs) else ("really below" if hi < 0 else "really above")
        parts.append(f"vs float32 {vs['delta_top1']:+.2f} [{lo:+.1f}, {hi:+.1f}], p={vs['p_value']:.2g}: {verdict}")
    if r.get("stopped_early"):
        parts.append(f"stopped early after {r['images']} images")
    return "<br>".join(parts)


def _stopped_symbols(rows: Sequence[Mapping]) -> list:
    return ["x" if r.get("stopped_early") else "circle" for r in rows]


def accuracy_vs_qem(rows) -> go.Figure:
    """Top-1 and top-5 of each swept QEM (log x) with 95 % intervals as error bars, float32 and int8
    top-1 as reference lines; plans stopped early are drawn as crosses."""
    mq = [_row(r) for r in rows if _row(r)["method"] == "mixquant"]
    fig = go.Figure()
    for metric, color in (("top1", "#1f77b4"), ("top5", "#2ca02c")):
        fig.add_trace(go.Scatter(
            x=[r["qem"] for r in mq], y=[r[metric] for r in mq], mode="lines+markers",
            name=metric.replace("top", "top-"), line=dict(color=color), error_y=interval_bars(mq, metric),
            marker=dict(symbol=_stopped_symbols(mq), size=8),
            customdata=[[r["size_mb"], r["avg_bits"], r["bit_set"], _noise_note(r)] for r in mq],
            hovertemplate=("QEM %{x:.4g}<br>%{y:.2f} %<br>%{customdata[0]:.2f} MB, "
                           "%{customdata[1]:.2f} avg bits<br>bits {%{customdata[2]}}<br>%{customdata[3]}<extra></extra>"),
        ))
    _references(fig, rows, "top1")
    fig.update_xaxes(type="log", title="QEM (log scale)")
    fig.update_yaxes(title="accuracy (%)")
    fig.update_layout(title="Accuracy against QEM (bars: 95 % intervals; x: stopped early)", height=420, margin=dict(l=10, r=10, t=60, b=10))
    return fig


def _accuracy_against(rows, x: str, x_title: str, x_hover: str, title: str, methods: Sequence[str], mode: str) -> go.Figure:
    """Top-1 against the column ``x``: a trace per plan method of ``methods``, float32 and int8 as
    reference points and lines; rows without a value of ``x`` are left out."""
    all_rows = [r for r in (_row(r) for r in rows) if r.get(x) is not None]
    fig = go.Figure()
    for method in methods:
        plans = [r for r in all_rows if r["method"] == method]
        if not plans:
            continue
        fig.add_trace(go.Scatter(
            x=[r[x] for r in plans], y=[r["top1"] for r in plans], mode=mode,
            name="MixQuant top-1" if method == "mixquant" else method, error_y=interval_bars(plans, "top1"),
            marker=dict(symbol=_stopped_symbols(plans), size=8), **({"line": dict(color="#1f77b4")} if method == "mixquant" else {}),
            customdata=[[r["qem"], r["top5"], r["avg_bits"], _noise_note(r)] for r in plans],
            hovertemplate=(f"{x_hover}<br>top-1 %{{y:.2f}} %<br>top-5 %{{customdata[1]:.2f}} %<br>QEM %{{customdata[0]:.4g}}, "
                           "%{customdata[2]:.2f} avg bits<br>%{customdata[3]}<extra></extra>"),
        ))
    for method, symbol in (("float32", "diamond"), ("int8", "square")):
        ref = next((r for r in all_rows if r["method"] == method), None)
        if ref is not None:
            fig.add_trace(go.Scatter(x=[ref[x]], y=[ref["top1"]], mode="markers", name=method,
                                     error_y=interval_bars([ref], "top1"), customdata=[_noise_note(ref)],
                                     marker=dict(symbol=symbol, size=11, color=REFERENCE_STYLE[method]["color"]),
                                     hovertemplate=f"{method}<br>{x_hover}<br>top-1 %{{y:.2f}} %<br>%{{customdata}}<extra></extra>"))
    _references(fig, rows, "top1")
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(title="top-1 (%)")
    fig.update_layout(title=title, height=420, margin=dict(l=10, r=10, t=60, b=10))
    return fig


def accuracy_vs_size(rows) -> go.Figure:
    """Top-1 against model size: the MixQuant plans, with float32 and int8 as reference points and lines."""
    return _accuracy_against(rows, "size_mb", "model size (MB)", "%{x:.2f} MB",
                             "Accuracy against model size (bars: 95 % intervals)", ("mixquant",), "lines+markers")


def accuracy_vs_latency(rows) -> go.Figure:
    """Top-1 against latency (``latency_ms``: ONNX Runtime CPU, batch 1, ms per image of each plan's
    ONNX export): a point per measured plan, a trace per method, float32 and int8 as references."""
    methods = list(dict.fromkeys(_row(r)["method"] for r in rows if _row(r)["method"] not in REFERENCE_STYLE))
    return _accuracy_against(rows, "latency_ms", "latency (ms per image, batch 1, ONNX Runtime CPU)",
                             "%{x:.2f} ms/image", "Accuracy against latency (bars: 95 % intervals)", methods, "markers")


def kind_sensitivity_figure(results, int8_top1: Optional[float] = None, float_top1: Optional[float] = None) -> go.Figure:
    """Top-1 when only one layer kind goes to b bits (others at 8): one line per kind."""
    data = [_row(r) for r in results]
    fig = go.Figure()
    for kind in KINDS:
        pts = sorted((r for r in data if r["kind"] == kind), key=lambda r: r["bits"])
        if pts:
            fig.add_trace(go.Scatter(
                x=[r["bits"] for r in pts], y=[r["top1"] for r in pts], mode="lines+markers", name=kind,
                line=dict(color=KIND_COLORS[kind]), customdata=[[r["layers"], r["params"], r["top5"]] for r in pts],
                hovertemplate=(f"<b>{kind}</b> at %{{x}} bits<br>top-1 %{{y:.2f}} %<br>top-5 %{{customdata[2]:.2f}} %"
                               "<br>%{customdata[0]} layers, %{customdata[1]:,} params<extra></extra>"),
            ))
    for name, value in (("float32", float_top1), ("int8", int8_top1)):
        if value is not None:
            fig.add_hline(y=value, line=REFERENCE_STYLE[name], annotation_text=f"{name} {value:.1f} %",
                          annotation_position=REFERENCE_LABEL[name])
    fig.update_xaxes(title="bits of that kind (all other layers at 8)", dtick=1, autorange="reversed")
    fig.update_yaxes(title="top-1 (%)")
    fig.update_layout(title="Sensitivity of each layer kind", height=420, margin=dict(l=10, r=10, t=60, b=10))
    return fig


def most_sensitive_figure(layers) -> go.Figure:
    """RQE of the most sensitive layer at each bit-width (log y), labelled with the layer."""
    data = [_row(r) for r in layers]
    fig = go.Figure(go.Bar(
        x=[f"{r['bits']} bit" for r in data], y=[r["rqe"] for r in data],
        marker_color=[KIND_COLORS.get(r["kind"], "#7f7f7f") for r in data], text=[r["name"] for r in data],
        textposition="outside", customdata=[[r["kind"], r["params"]] for r in data],
        hovertemplate="%{x}: <b>%{text}</b><br>kind %{customdata[0]}<br>params %{customdata[1]:,}<br>RQE %{y:.3e}<extra></extra>",
    ))
    fig.update_yaxes(type="log", title="highest RQE")
    fig.update_layout(title="Most sensitive layer by RQE per bit-width", height=380, margin=dict(l=10, r=10, t=60, b=10))
    return fig


def act_sensitivity_figure(rows) -> go.Figure:
    """Per layer (model order), the loss increase when only its input is quantized; the top-1 drop in the hover."""
    data = [_row(r) for r in rows]
    fig = go.Figure(go.Bar(
        x=[r["name"] for r in data], y=[r["loss_increase"] for r in data],
        marker_color=[KIND_COLORS.get(r["kind"], "#7f7f7f") for r in data],
        customdata=[[r["kind"], r["top1_drop"], r["lo"], r["hi"]] for r in data],
        hovertemplate="<b>%{x}</b> (%{customdata[0]})<br>loss increase %{y:+.4f}<br>top-1 drop %{customdata[1]:.2f} "
                      "points<br>range [%{customdata[2]:.3g}, %{customdata[3]:.3g}]<extra></extra>",
    ))
    fig.update_xaxes(title="layer whose input alone is quantized", showticklabels=len(data) <= 40)
    fig.update_yaxes(title="mean cross-entropy increase vs float32")
    fig.update_layout(title="Sensitivity of each layer's input at 8 bits", height=400, margin=dict(l=10, r=10, t=60, b=10))
    return fig
