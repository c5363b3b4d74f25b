"""QE table speed: the plain loop (Algorithm 1), ours, and one read of all the weights, side by side.

    python benchmarks/bench_qe.py                      # CPU, the nine models, asymmetric
    python benchmarks/bench_qe.py --device cuda --quantizers asymmetric symmetric per-channel
    python benchmarks/bench_qe.py --models resnet18 mobilenet_v2 --repeats 9
    python benchmarks/bench_qe.py --models efficientnet_lite0 resnet18 \
        --quantizers asymmetric asymmetric-mse per-channel per-channel-mse   # + MSE / min-max ratios

The MSE-clipped quantizers (``*-mse``) take the torch range search in ``ours`` (see
``quant/kernels/__init__.py``): 80 clipping ratios per bit-width, so expect tens of times min/max.

Random weights (``build_model(name, pretrained=False)``): the cost does not depend on the values.
Every model's timings are interleaved in the same run, so a noisy machine moves them together;
the ratios are what to compare. Each number is the minimum (``--stat median`` for the median) of
``--repeats`` runs (the plain loop: of ``--ref-repeats`` runs), after one warm-up run (JIT/Triton
compilation). "ours" reuses
the work-item table that depends on the layer shapes only (cached per architecture); "1st call"
builds it again each time, as for a model seen for the first time.

Search (CPU, numpy, whatever the device): ``search_many`` for 100 QEMs and ``breakpoints`` (every
distinct plan) on the table just computed.

The floor is the faster of two ways to read every weight once: ``w.sum()`` per layer, and
``torch._foreach_norm`` over all layers (one multi-tensor kernel on CUDA).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mixquant_core.models.layers import find_layers, layer_weights  # noqa: E402
from mixquant_core.models.registry import PAPER_MODELS, build_model  # noqa: E402
from mixquant_core.quant.qe import qe_table  # noqa: E402
from mixquant_core.quant.quantizers import base_scheme, is_mse  # noqa: E402
from mixquant_core.quant.kernels.work_items import work_items  # noqa: E402
from mixquant_core.plans.search import breakpoints, search_many  # noqa: E402

MODELS = list(PAPER_MODELS) + ["efficientnet_lite0"]
STAT = min  # --stat: min (default: on a shared machine noise only ever adds time) or median


def timer(device: torch.device):
    def run(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t
    return run


def bench_model(name, device, quantizers, repeats, ref_repeats, check):
    model = build_model(name, pretrained=False).model.to(device).eval()
    layers = find_layers(model)
    weights = [w.detach() for w in layer_weights(model, layers)]
    params = sum(w.numel() for w in weights)
    run = timer(device)

    def read_per_layer():
        for w in weights:
            w.sum()

    def read_foreach():
        torch._foreach_norm(weights)

    out = []
    with torch.inference_mode():
        for q in quantizers:
            fast = lambda: qe_table(model, q, layers=layers, device=device)  # noqa: E731
            ref = lambda: qe_table(model, q, layers=layers, device=device, method="reference")  # noqa: E731
            fast(), read_per_layer(), read_foreach()  # warm-up: compilation, caches, threads
            t_fast, t_cold, t_read1, t_read2, t_ref = [], [], [], [], []
            for r in range(repeats):
                t_read1.append(run(read_per_layer))
                t_fast.append(run(fast))
                work_items.cache_clear()  # a model seen for the first time: its work-item table is built
                t_cold.append(run(fast))
                t_read2.append(run(read_foreach))
                if r < ref_repeats:
                    t_ref.append(run(ref))
            row = dict(model=name, quantizer=q, layers=len(layers), params=params,
                       ref=STAT(t_ref), fast=STAT(t_fast), cold=STAT(t_cold), floor=min(STAT(t_read1), STAT(t_read2)))
            if check:
                a, b = fast(), ref()
                row["max_rel_diff"] = float((abs(a.qe - b.qe) / abs(b.qe).clip(min=1e-30)).max())
            table = fast()
            qems = np.geomspace(1.0, 1e4, 100)
            row["search"] = STAT([run(lambda: search_many(table, qems)) for _ in range(repeats)])
            row["breakpoints"] = STAT([run(lambda: breakpoints(table)) for _ in range(repeats)])
            row["plans"] = len(breakpoints(table))
            out.append(row)
            print(format_row(row), flush=True)
    return out


def format_row(r) -> str:
    s = (f"| {r['model']:<18} | {r['quantizer']:<11} | {r['layers']:>4} | {r['params'] / 1e6:>6.1f} | "
         f"{r['ref'] * 1e3:>9.1f} | {r['fast'] * 1e3:>8.2f} | {r['cold'] * 1e3:>8.2f} | {r['floor'] * 1e3:>7.2f} | "
         f"{r['ref'] / r['fast']:>7.0f}x | {r['fast'] / r['floor']:>6.1f}x | "
         f"{r['search'] * 1e3:.3f} | {r['breakpoints'] * 1e3:.3f} ({r['plans']}) |")
    if "max_rel_diff" in r:
        s += f" {r['max_rel_diff']:.1e} |"
    return s


HEADER = ("| model              | quantizer   | lay. | Mparam | plain (ms) | ours (ms) | ours, 1st call (ms) | read (ms) | plain/ours | ours/read | search, 100 QEMs (ms) | breakpoints (ms) (plans) |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--quantizers", nargs="+", default=["asymmetric"])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--ref-repeats", type=int, default=1)
    p.add_argument("--check", action="store_true", help="also print max relative QE difference fast vs plain")
    p.add_argument("--stat", choices=["min", "median"], default="min")
    args = p.parse_args(argv)
    global STAT
    STAT = min if args.stat == "min" else statistics.median
    device = torch.device(args.device)
    torch.manual_seed(0)
    info = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} torch threads"
    print(f"# QE table, bits 8..2, {info}, torch {torch.__version__}, {args.stat} of {args.repeats} runs "
          f"(plain loop: {min(args.ref_repeats, args.repeats)})")
    print(HEADER + (" max rel diff |" if args.check else ""))
    print("|" + "---|" * (12 + args.check))
    rows = []
    for name in args.models:
        rows += bench_model(name, device, args.quantizers, args.repeats, args.ref_repeats, args.check)
    for r in rows:  # MSE-clipped ranges against their min/max scheme, same model, same run
        base = next((o for o in rows if o["model"] == r["model"] and o["quantizer"] == base_scheme(r["quantizer"])), None)
        if is_mse(r["quantizer"]) and base is not None:
            print(f"# {r['model']}: {r['quantizer']} / {base['quantizer']}: ours {r['fast'] / base['fast']:.0f}x "
                  f"({r['fast'] * 1e3:.0f} vs {base['fast'] * 1e3:.1f} ms), plain loop {r['ref'] / base['ref']:.0f}x")
    worst_speedup = min(r["ref"] / r["fast"] for r in rows)
    worst_floor = max(r["fast"] / r["floor"] for r in rows)
    print(f"# worst plain/ours: {worst_speedup:.0f}x   worst ours/read: {worst_floor:.1f}x   "
          f"slowest search: {max(r['search'] for r in rows) * 1e3:.3f} ms   "
          f"slowest breakpoints: {max(r['breakpoints'] for r in rows) * 1e3:.3f} ms")
    return rows


if __name__ == "__main__":
    main()
