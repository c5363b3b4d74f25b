"""Images that early stopping saves on the default sweep (the plans of `mixquant sweep`'s default grid).

    python benchmarks/early_stop_savings.py --store /tmp/measure.sqlite          # all 1,300 images

Evaluates every distinct plan of the default sweep (float32, int8, the default 12-point QEM grid)
with the early-stop rule (Evaluations(ws, early_stop=True)), the smallest plans first so that the hopeless
ones are counted before the long full evaluations; every result goes to the results store as it
ends, so an interrupted run keeps what it measured and a rerun continues from it. Prints, per plan,
the images evaluated and whether it stopped early, then the images saved against evaluating every
plan on every image. `mixquant sweep --early-stop --store SAME` afterwards shows the same sweep
from the store.
"""
from __future__ import annotations

import argparse
import json
import os
import time

from mixquant_core.data.image_sets import open_image_folder
from mixquant_core.data.load import load_tensors
from mixquant_core.evaluation.store import open_store
from mixquant_core.models.registry import DEFAULT_MODEL, load_model
from mixquant_core.plans.search import default_qem_grid
from mixquant_core.evaluations import Evaluations
from mixquant_core.workspace import Workspace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--data", default=os.path.join(os.environ.get("MIXQUANT_DATA", ""), "imagenet-val-1300"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--store", default=None, help="results store (default $MIXQUANT_HOME/results.sqlite)")
    args = ap.parse_args()
    ws = Workspace(load_model(args.model), device="cpu")
    ev = Evaluations(ws, store=open_store(args.store), early_stop=True)
    data = load_tensors(open_image_folder(args.data).subset(args.limit), ws.loaded.preprocess)
    _, _, plans = ws.sweep_plans(default_qem_grid(ws.table(), 12))
    distinct = list(dict.fromkeys(None if p is None else tuple(int(b) for b in p) for p in plans))
    f32 = ev.evaluate_bits(None, data)
    print(f"float32: top-1 {f32.top1:.2f} % on {f32.images} images; early-stop threshold {f32.top1 / 2:.2f} %", flush=True)
    quantized = sorted((p for p in distinct if p is not None), key=lambda p: ws.size(p).plan_mb)
    report = []
    for bits in quantized:
        start = time.perf_counter()
        m = ev.evaluate_bits(bits, data)
        report.append({"avg_bits": round(ws.size(bits).avg_bits, 3), "images": m.images, "stopped_early": m.stopped_early,
                       "top1": round(m.top1, 2), "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(report[-1]), flush=True)
    full = len(distinct) * len(data)
    used = f32.images + sum(r["images"] for r in report)
    print(json.dumps({"distinct_plans": len(distinct), "images_per_plan": len(data), "images_without_early_stop": full,
                      "images_with_early_stop": used, "saved": full - used, "saved_share": round((full - used) / full, 4),
                      "plans_stopped": sum(r["stopped_early"] for r in report)}))


if __name__ == "__main__":
    main()
