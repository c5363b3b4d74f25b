"""Issue #22's table: EfficientNet-Lite0 at 4.0 and 3.0 average bits (Fisher-budgeted, candidates
8..2 and {8, 4, 2}) and uniform 4 bits, per-channel grid, with each weight-rounding method:

* ``brecq``: AdaRound + BRECQ blocks on the MSE-clipped grid (today's budget: 40 iterations per
  block, batch 16, lr 0.02, 128 calibration images), as docs/RESULTS.md's Table 1 rows.
* ``gptq``: GPTQ (recon/gptq.py) on the same grid, one sequential pass, 256 calibration images.
* ``gptq+brecq``: BRECQ's AdaRound started from GPTQ's rounding, BRECQ's budget.

Every row is appended to a JSON-lines file as it finishes (top-1/top-5/loss on all 1,300 validation
images, wall time of the method), so methods can run in separate processes:

  python benchmarks/paper_tables/low_bits.py --method brecq --out OUT/low_bits.jsonl

One run of a point is one draw: at 3 average bits float rounding alone (the batch size GPTQ's passes
use) moves Lite0's top-1 by over a point. ``--batch-size 8,16,24,32`` (GPTQ) or ``--seed 0,1,2,3``
(BRECQ's sample order) runs each point once per value on the same plan and prints the mean, the
spread and the mean number of correctly classified images, so methods are compared on means.

The plans are the same for every method: Fisher allocation on the per-channel min/max QE grid with
Fisher from 64 calibration images (``mixquant allocate --cost fisher --quantizer per-channel``).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from mixquant_core.data.image_sets import open_calibration_folder
from mixquant_core.data.load import load_tensors
from mixquant_core.models.registry import load_model
from mixquant_core.recon.reconstruct import ReconConfig, evaluate_quantized, reconstruct_plan
from mixquant_core.workspace import Workspace

QUANTIZER = "per-channel"
POINTS = (  # (label, candidate bits, average bits or None for uniform 4)
    ("Fisher 4.0 avg, {8,4,2}", (8, 4, 2), 4.0),
    ("Fisher 4.0 avg, 8..2", (8, 7, 6, 5, 4, 3, 2), 4.0),
    ("Fisher 3.0 avg, {8,4,2}", (8, 4, 2), 3.0),
    ("Fisher 3.0 avg, 8..2", (8, 7, 6, 5, 4, 3, 2), 3.0),
    ("uniform 4", (8, 7, 6, 5, 4, 3, 2), None),
)


def data_dir(name: str) -> Path:
    return Path(os.environ["MIXQUANT_DATA"]) / name


def eval_tensors(loaded, cache: Path):
    """The 1,300 validation images, decoded once and shared between processes through ``cache``."""
    from mixquant_core.data.image_sets import open_image_folder

    if cache.is_file():
        return torch.load(cache, weights_only=False)
    data = load_tensors(open_image_folder(data_dir("imagenet-val-1300")), loaded.preprocess)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    torch.save(data, tmp)
    tmp.replace(cache)
    return data


def points(loaded, fisher_images: int, ranges: str = "weights", cost: str = "fisher", only=None, quantizer: str = QUANTIZER):
    """(label, Workspace, plan) for every point of the table (``only``: whose label contains it);
    ``ranges="loss"``: loss-aware ranges on the Fisher images, recorded in the plans (the
    reconstruction then starts from them); ``cost``: the allocation's (fisher or fisher-gptq)."""
    fisher_calib = load_tensors(open_calibration_folder(str(data_dir("imagenet-calib-1000")), fisher_images),
                                loaded.preprocess)
    out, workspaces = [], {}
    for label, cands, avg in POINTS:
        if only and only not in label:
            continue
        if cands not in workspaces:
            workspaces[cands] = Workspace(loaded, quantizer, bits=cands, device="cpu", ranges=ranges, calib=fisher_calib)
        ws = workspaces[cands]
        if avg is None:
            plan = ws.plan_from_bits(ws.uniform(4))
        else:
            plan = ws.plan_from_bits(ws.budget_bits(cost, avg_bits=avg, calib=fisher_calib),
                                     extra={"allocation": cost, "fisher_images": fisher_images})
        out.append((label, ws, plan))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=("brecq", "gptq", "gptq+brecq"), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", help="only the points whose label contains this text")
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--lr", type=float, default=2e-2)
    ap.add_argument("--batch-size", default="16", help="one or more, comma-separated: one run per value")
    ap.add_argument("--seed", default="0", help="one or more, comma-separated: one run per value")
    ap.add_argument("--calib-images", type=int, default=128)
    ap.add_argument("--fisher-images", type=int, default=64)
    ap.add_argument("--cache", default="/tmp/mixquant_val1300.pt")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ranges", choices=("weights", "loss"), default="weights",
                    help="loss: plans on loss-aware ranges, and the rounding on their grid (--scheme per-channel)")
    ap.add_argument("--cost", choices=("fisher", "fisher-gptq"), default="fisher")
    ap.add_argument("--scheme", default="per-channel-mse", help="the grid the rounding method works on")
    ap.add_argument("--plan-quantizer", default=QUANTIZER, help=f"the plans' weight scheme (default {QUANTIZER})")
    ap.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=True,
                    help="GPTQ: columns in descending diag(H) order (default) or natural order")
    ap.add_argument("--gptq-inputs", default="stage", help="GPTQ: stage, layer or float-target (recon/gptq.py)")
    ap.add_argument("--damp", type=float, default=0.01, help="GPTQ dampening (fraction of mean diag H)")
    ap.add_argument("--gptq-grid", default="best", help="GPTQ: best (each channel's best grid) or plan (recon/gptq.py)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model("efficientnet_lite0")
    data = eval_tensors(loaded, Path(args.cache))
    calib_list = open_calibration_folder(str(data_dir("imagenet-calib-1000")), args.calib_images)
    calib = load_tensors(calib_list, loaded.preprocess).inputs()
    batch_sizes, seeds = _ints(args.batch_size), _ints(args.seed)
    with open(args.out, "a") as out:
        for label, ws, plan in points(loaded, args.fisher_images, args.ranges, args.cost, args.only, args.plan_quantizer):
            runs = []
            for batch_size in batch_sizes:
                for seed in seeds:
                    rec = _run(args, loaded, plan, label, calib, data, batch_size, seed)
                    out.write(json.dumps(rec) + "\n")
                    out.flush()
                    print(json.dumps(rec), flush=True)
                    runs.append(rec)
            if len(runs) > 1:
                print(summary(label, args.method, runs), flush=True)


def _ints(text: str):
    return [int(v) for v in str(text).split(",") if v.strip()]


def _run(args, loaded, plan, label, calib, data, batch_size: int, seed: int) -> dict:
    t0 = time.perf_counter()
    cfg = ReconConfig(iters=args.iters, batch_size=batch_size, lr=args.lr, device="cpu", seed=seed,
                      method=args.method, scheme=args.scheme, act_order=args.act_order,
                      gptq_inputs=args.gptq_inputs, damp=args.damp, gptq_grid=args.gptq_grid)
    result = reconstruct_plan(loaded.model, plan, calib, cfg)
    seconds = time.perf_counter() - t0
    metrics = evaluate_quantized(loaded.model, result.layers, data)
    return {"point": label, "method": args.method, "avg_bits": plan.size["avg_bits"],
            "bit_set": sorted(set(plan.bits.values())), **metrics.to_dict(),
            "method_seconds": round(seconds, 1), "calib_images": len(calib),
            "config": {"iters": args.iters, "batch_size": batch_size, "seed": seed, "lr": args.lr,
                       "threads": args.threads, "ranges": args.ranges, "cost": args.cost, "scheme": args.scheme,
                       "plan_quantizer": args.plan_quantizer, "act_order": args.act_order,
                       "gptq_inputs": args.gptq_inputs, "damp": args.damp, "gptq_grid": args.gptq_grid}}


def summary(label: str, method: str, runs) -> str:
    """One line: mean top-1 and loss over the runs, their range, and the mean count of correct images."""
    top1 = [r["top1"] for r in runs]
    correct = sum(round(r["top1"] * r["images"] / 100) for r in runs) / len(runs)
    loss = sum(r["loss"] for r in runs) / len(runs)
    return (f"{label}, {method}: mean top-1 {sum(top1) / len(top1):.2f} % over {len(runs)} runs "
            f"({correct:.1f} of {runs[0]['images']} images), range {min(top1):.2f}-{max(top1):.2f}, "
            f"mean loss {loss:.3f}")


if __name__ == "__main__":
    main()
