"""Evaluation engines side by side (called by bench_sweep.py --engines): eager PyTorch against ONNX
Runtime, bare forward and per plan, and how ORT gets a plan's weights.

Printed, all in one run on the same images (best of --repeats, interleaved):
* bare eager forward (torch CPU default batch) and bare ORT forward (float session, no rebuild),
  and bare ORT at batch 4/8/16/32;
* per plan, each engine: ``Workspace.sweep`` wall time / distinct plans, i.e. including the weight
  swap (torch) or graph edit + session rebuild (ORT);
* the two ways to give ORT new weights: rebuild a session from the edited in-memory ModelProto
  (what the engine does: its cost, and its forward throughput, BatchNorm folded) vs overridable
  initializers (weights as graph inputs, fed on every run: no rebuild, but no constant folding).
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch


def _best(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def run(loaded, data, qems, repeats: int = 2) -> dict:
    from mixquant_core.evaluation.engines.onnxruntime_engine import DEFAULT_BATCH, new_session, planned_weights
    from mixquant_core.evaluation.evaluate import default_batch_size
    from mixquant_core.models.onnx_graph import float_graph, set_initializers, state_initializers
    from mixquant_core.evaluations import Evaluations
    from mixquant_core.workspace import Workspace

    model = loaded.model.cpu().eval()
    n = len(data)
    eager_batch = default_batch_size(torch.device("cpu"))
    xs_eager = [x for x, _ in data.batches(eager_batch)]
    t = time.perf_counter()
    proto = float_graph(model, data.image_shape)
    trace_s = time.perf_counter() - t
    float_bytes = proto.SerializeToString()
    session = new_session(float_bytes)

    def eager():
        with torch.inference_mode():
            for x in xs_eager:
                model(x)

    def ort_bare(batch):
        xs = [x.numpy() for x, _ in data.batches(batch)]
        return lambda: [session.run(None, {"input": x}) for x in xs]

    eager(), ort_bare(DEFAULT_BATCH)()  # warm-up
    ws_t = Workspace(loaded, device="cpu", engine="torch")
    ws_o = Workspace(loaded, device="cpu", engine="onnxruntime")
    ws_t.table(), ws_o.table()

    def sweep(ws):
        def go():
            ws.evaluator.forget()  # every distinct plan evaluated again
            ev = Evaluations(ws)
            ev.sweep(data, qems)
            tallies[ws.evaluator.engine.name] = ev.tally
        return go

    tallies = {}
    t_eager, t_ort, t_sweep_t, t_sweep_o = [], [], [], []
    for _ in range(repeats):  # interleaved: load on a shared machine hits all four alike
        t_eager.append(_best(eager, 1))
        t_ort.append(_best(ort_bare(DEFAULT_BATCH), 1))
        t_sweep_t.append(_best(sweep(ws_t), 1))
        t_sweep_o.append(_best(sweep(ws_o), 1))
    plans = tallies["onnxruntime"].distinct
    out = {"images": n, "plans": plans, "trace_s": trace_s, "eager_batch": eager_batch, "ort_batch": DEFAULT_BATCH,
           "bare_eager": n / min(t_eager), "bare_ort": n / min(t_ort),
           "plan_torch": n * plans / min(t_sweep_t), "plan_ort": n * plans / min(t_sweep_o)}
    out["ort_batches"] = {b: n / _best(ort_bare(b), repeats) for b in (4, 8, 16, 32)}

    # how a plan's weights reach ORT: rebuild (engine) vs overridable initializers
    bits = {l.name: int(b) for l, b in zip(ws_o.layers, ws_o.bits_for([qems[len(qems) // 2]])[0])}
    weights = planned_weights(model, bits, ws_o.quantizer)

    def rebuild():
        p = float_graph(model, data.image_shape)
        tensors = state_initializers(model, p)
        tensors.update(weights)
        set_initializers(p, tensors)
        return new_session(p.SerializeToString())

    out["rebuild_s"] = _best(rebuild, 3)
    rebuilt = rebuild()
    xs = [x.numpy() for x, _ in data.batches(DEFAULT_BATCH)]
    out["rebuilt_fwd"] = n / _best(lambda: [rebuilt.run(None, {"input": x}) for x in xs], repeats)
    import onnx
    from onnx import helper

    p = float_graph(model, data.image_shape)
    for init in p.graph.initializer:  # every initializer also a graph input: overridable
        p.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    t = time.perf_counter()
    over = new_session(p.SerializeToString())
    out["overridable_build_s"] = time.perf_counter() - t
    feeds = {k: v.numpy() for k, v in weights.items()}
    out["overridable_fwd"] = n / _best(lambda: [over.run(None, {"input": x, **feeds}) for x in xs], repeats)
    del onnx
    return out


def print_table(r: dict, model_name: str) -> None:
    load = os.getloadavg()
    print(f"\n# engines: {model_name}, {r['images']} images, {r['plans']} distinct plans per sweep, "
          f"{torch.get_num_threads()} torch threads, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
          f"(1/5/15 min); ONNX trace (once per model): {r['trace_s']:.2f} s")
    print("| engine | batch | bare forward (img/s) | per plan (img/s) | per plan / bare | per plan vs eager per plan |")
    print("|---|---|---|---|---|---|")
    print(f"| eager PyTorch | {r['eager_batch']} | {r['bare_eager']:.1f} | {r['plan_torch']:.1f} | "
          f"{r['plan_torch'] / r['bare_eager']:.0%} | 1.00x |")
    print(f"| ONNX Runtime | {r['ort_batch']} | {r['bare_ort']:.1f} | {r['plan_ort']:.1f} | "
          f"{r['plan_ort'] / r['bare_ort']:.0%} | {r['plan_ort'] / r['plan_torch']:.2f}x |")
    print("# ORT bare forward by batch: " + ", ".join(f"{b}: {v:.1f} img/s" for b, v in r["ort_batches"].items()))
    print(f"# new weights into ORT: rebuild session from the edited ModelProto {r['rebuild_s'] * 1000:.0f} ms, then "
          f"{r['rebuilt_fwd']:.1f} img/s; overridable initializers: build {r['overridable_build_s'] * 1000:.0f} ms once, "
          f"then {r['overridable_fwd']:.1f} img/s (no BatchNorm folding)")
