"""Speed at transformer scale: the QE table and a 3-plan sweep of torchvision ViT-B/16 and ViT-L/16
(random weights: the cost does not depend on the values), side by side with each engine's bare
forward, in one run.

    python benchmarks/bench_transformers.py                             # vit_b_16 and vit_l_16, 16 images
    python benchmarks/bench_transformers.py --models vit_b_16 --images 32 --engines onnxruntime

For each model: the QE table (min/max and MSE-clipped quantizers; weights read once as the floor),
then per engine: the bare forward (images/s of the float model, no plan), and the sweep of three
plans (float32, int8 and one mixed QEM plan) through ``Evaluations.evaluate_plans`` (images/s per
plan, including putting each plan's weights in place). The images are random pixels with label 0:
speed only. One run; every figure of a model is measured back to back, so compare the ratios.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mixquant_core.data.image_sets import EvalTensors  # noqa: E402
from mixquant_core.evaluations import Evaluations  # noqa: E402
from mixquant_core.models.layers import layer_weights  # noqa: E402
from mixquant_core.models.registry import build_model  # noqa: E402
from mixquant_core.workspace import Workspace  # noqa: E402


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def qe_figures(loaded, quantizers) -> list:
    rows = []
    base = Workspace(loaded, quantizers[0], device="cpu", engine="torch")
    weights = layer_weights(loaded.model, base.layers)
    floor = seconds(lambda: [w.sum() for w in weights])
    Workspace(loaded, quantizers[0], device="cpu", engine="torch").table()  # warm-up: numba compiles its kernels once
    params = sum(w.numel() for w in weights)
    covered = 100 * params / sum(p.numel() for p in loaded.model.parameters())
    for q in quantizers:
        ws = Workspace(loaded, q, device="cpu", engine="torch")
        rows.append((q, seconds(ws.table), floor, len(ws.layers), params, covered))
    return rows


def engine_figures(loaded, engine: str, images: int) -> dict:
    ws = Workspace(loaded, "asymmetric", device="cpu", engine=engine)
    ws.table()
    shape = (3, loaded.preprocess.crop, loaded.preprocess.crop)
    data = EvalTensors(torch.rand((images, *shape), generator=torch.Generator().manual_seed(0)),
                       torch.zeros(images, dtype=torch.long))
    fam = ws.family()
    mixed = next((tuple(b) for b in fam.bits if len(set(b)) > 1), tuple(fam.bits[len(fam.bits) // 2]))
    plans = [None, tuple(ws.uniform(8)), mixed]
    with ws.evaluator.private_model() as model:
        ws.evaluator.engine.evaluate(model, data)  # warm-up: ONNX trace, kernel choices
        bare = seconds(lambda: ws.evaluator.engine.evaluate(model, data))
    ws.evaluator.forget()
    ev = Evaluations(ws)
    sweep = seconds(lambda: ev.evaluate_plans(plans, data))
    used = ws.evaluator.engine.name  # the ONNX Runtime engine falls back to torch on a model it cannot export
    return {"engine": engine, "ran": used, "bare_ips": images / bare, "plan_ips": images * len(plans) / sweep,
            "plans": ev.tally.distinct, "notices": list(ws.evaluator.notices)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_b_16", "vit_l_16"])
    parser.add_argument("--quantizers", nargs="+", default=["asymmetric", "per-channel", "asymmetric-mse", "per-channel-mse"])
    parser.add_argument("--engines", nargs="+", default=["torch", "onnxruntime"])
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}")
    for name in args.models:
        loaded = build_model(name, pretrained=False)
        print(f"\n## {name} (random weights)\n")
        print("| quantizer | QE table s | one read of the weights s | ratio | layers | weights | of all parameters |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for q, t, floor, layers, params, covered in qe_figures(loaded, args.quantizers):
            print(f"| {q} | {t:.2f} | {floor:.3f} | {t / floor:.0f}x | {layers} | {params / 1e6:.1f} M | {covered:.1f} % |")
        print(f"\n| engine | ran as | bare forward img/s | per plan img/s ({args.images} images, 3 plans) | per plan / bare |")
        print("|---|---|---:|---:|---:|")
        for engine in args.engines:
            r = engine_figures(loaded, engine, args.images)
            print(f"| {r['engine']} | {r['ran']} | {r['bare_ips']:.2f} | {r['plan_ips']:.2f} | "
                  f"{100 * r['plan_ips'] / r['bare_ips']:.0f} % |")
            for notice in r["notices"]:
                print(f"  note: {notice}")


if __name__ == "__main__":
    main()
