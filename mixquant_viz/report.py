"""One self-contained HTML report for people without Python: plotly.js embedded, works offline.

Data in (a Workspace with its QE table, the sweep's rows, optionally the accuracy target's answer),
a string of HTML out; `mixquant report` and the app's "Download report" button both call report_html.
"""
from __future__ import annotations

import datetime
import html
from typing import Optional, Sequence

import plotly.io as pio

from mixquant_core.evaluation.statistics import EarlyStop, within_noise
from mixquant_core.evaluation.store import mixquant_version
from mixquant_core.models.layers import KINDS

from . import figures

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
td,th{border:1px solid #ccc;padding:.25em .55em;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.box{background:#f6f9fc;border-left:4px solid #1f77b4;padding:.6em 1em;margin:1em 0}.noise{color:#8a6d00}.stop{color:#b22}
"""


def _table(headers: Sequence[str], body: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><tr>{head}</tr>{rows}</table>"


def _ci(value: float, ci) -> str:
    return f"{value:.2f}" if not ci else f"{value:.2f} <small>[{ci[0]:.1f}, {ci[1]:.1f}]</small>"


def _versus(r) -> str:
    vs, note = r.vs_float32, ""
    if r.stopped_early:
        note = f' <span class="stop">stopped early after {r.images} images</span>'
    if not vs:
        return note
    lo, hi = vs["delta_ci"]
    noise = ' <span class="noise">within noise</span>' if within_noise(vs) else ""
    return f"{vs['delta_top1']:+.2f} <small>[{lo:+.1f}, {hi:+.1f}], p={vs['p_value']:.2g}</small>{noise}{note}"


def report_html(ws, data, rows, target=None, title: Optional[str] = None) -> str:
    """The report: model, QE heatmap, accuracy vs QEM and vs size with intervals, the chosen plan
    (the accuracy target's answer, when given) with its saving, and how the numbers were measured."""
    table = ws.table()
    name = ws.loaded.name
    title = title or f"MixQuant report: {name}"
    timed = any(r.latency_ms is not None for r in rows)
    figs = [figures.accuracy_vs_qem(rows), figures.accuracy_vs_size(rows), figures.qe_heatmap(table)]
    if timed:
        figs.append(figures.accuracy_vs_latency(rows))
    chosen, chosen_bar = "", False
    if target is not None and target.found:
        chosen_bar = True
        figs.insert(3, figures.plan_bits_bar(ws.layers, target.bits, ws.pinned))
        s, d = target.size, target.difference
        chosen = (f'<div class="box"><b>Chosen plan</b>: the smallest {target.method} plan whose top-1 stays within '
                  f'{target.max_drop:g} points of float32{" (95 % upper bound)" if target.confident else ""}'
                  f'{f", QEM {target.qem:.5g}" if target.qem else ""}: top-1 {target.metrics.top1:.2f} % vs '
                  f'{target.reference.top1:.2f} % for float32, <b>{s.plan_mb:.2f} MB instead of {s.float32_mb:.2f} MB '
                  f'({s.compression:.2f}x smaller, {100 * (1 - 1 / s.compression):.0f} % saved)</b>, {s.avg_bits:.2f} '
                  f'average bits. {html.escape(target.certainty())} Found by bisection: {target.evaluated} of '
                  f'{target.candidates} distinct plans evaluated.</div>')
    elif target is not None:
        chosen = f'<div class="box">{html.escape(target.certainty())}</div>'
    parts = [pio.to_html(f, full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False},
                         default_width="100%") for i, f in enumerate(figs)]
    counts = {k: sum(1 for l in ws.layers if l.kind == k) for k in KINDS}
    params = sum(l.params for l in ws.layers)
    model = _table(["", ""], [["model", html.escape(name)], ["source", html.escape(ws.loaded.source)],
                              ["weights fingerprint", ws.loaded.fingerprint],
                              ["quantizable layers", f"{len(ws.layers)} (" + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + ")"],
                              ["quantized parameters", f"{params:,}"], ["float32 size", f"{ws.float_bytes / 1e6:.2f} MB"],
                              ["quantizer", ws.quantizer], ["candidate bit-widths", ", ".join(map(str, ws.bits))]])
    body = [[r.method, f"{r.qem:.4g}" if r.qem else "", r.bit_set, _ci(r.top1, r.top1_ci), _ci(r.top5, r.top5_ci),
             f"{r.avg_bits:.2f}", f"{r.size_mb:.2f}", f"{r.compression:.2f}"]
            + ([f"{r.latency_ms:.2f}" if r.latency_ms is not None else ""] if timed else []) + [_versus(r)] for r in rows]
    sweep = _table(["plan", "QEM", "bit-widths", "top-1 % [95 %]", "top-5 % [95 %]", "avg bits", "MB", "x"]
                   + (["ms/image (ONNX Runtime, batch 1)"] if timed else []) + ["vs float32 (points) [95 %]"], body)
    stopped = sum(1 for r in rows if r.stopped_early)
    measured = _table(["", ""], [
        ["images", f"{len(data)} (evaluation set fingerprint {data.fingerprint})"],
        ["preprocessing", html.escape(repr(ws.loaded.preprocess))], ["engine", html.escape(ws.evaluator.label())],
        ["mixquant version", mixquant_version()], ["written", datetime.datetime.now().strftime("%Y-%m-%d %H:%M")],
        ["intervals", "95 % Wilson score intervals (statsmodels) for top-1/top-5; the difference with float32 is paired "
                      "(same images): Newcombe's hybrid score interval for paired data and McNemar's exact test"],
        ["early stopping", (f"{stopped} plan(s) stopped early: the rule " + EarlyStop.half_of(50.0, len(data)).describe()
                            .replace("below 25.0 %", "below half of float32's")) if stopped else "no plan stopped early"],
    ])
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class='sub'>Mixed-precision weight quantization (MixQuant: each layer gets the lowest bit-width b with "
            f"QE(b) &le; QEM &times; QE(8)), measured on {len(data)} images.</p>{chosen}"
            f"<h2>Model</h2>{model}<h2>Accuracy against QEM and size</h2>{parts[0]}{parts[1]}"
            f"<p>Bars are 95 % intervals: two plans whose bars overlap widely may not really differ on these images.</p>"
            f"{sweep}<h2>Quantization error per layer</h2>{parts[2]}"
            + (f"<h2>The chosen plan, layer by layer</h2>{parts[3]}" if chosen_bar else "")
            + (f"<h2>Accuracy against latency</h2>{parts[-1]}<p>Latency: each plan's ONNX export (float32: the float "
               f"graph) on ONNX Runtime's CPU provider on the machine that wrote this report, median ms per image at "
               f"batch 1.</p>" if timed else "")
            + f"<h2>How the numbers were measured</h2>{measured}</body></html>")
