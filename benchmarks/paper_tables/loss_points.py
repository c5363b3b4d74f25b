"""Issue #22's range table: EfficientNet-Lite0, round-to-nearest, per-channel grid, at the five
low-bit points (Fisher-budgeted 4.0 and 3.0 average bits with candidates 8..2 and {8, 4, 2}, and
uniform 4 bits), for each weight range: min/max (``per-channel``), MSE-clipped
(``per-channel-mse``) and loss-aware (``per-channel --ranges loss``: the clipping of least output
error). Each range gets its own Fisher allocation (the allocation scores the grid it will get),
Fisher and ranges from ``--calib-images`` images spread over imagenet-calib-1000; top-1 on all
1,300 validation images. One JSON line per row, as it finishes:

  python benchmarks/paper_tables/loss_points.py --ranges loss,per-channel,per-channel-mse --out OUT.jsonl

The same plans from the CLI: ``mixquant allocate --cost fisher --avg-bits 4 --bits 8,4,2
--quantizer per-channel --ranges loss --calib DIR --calib-images 64``, then ``mixquant evaluate``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from low_bits import POINTS, data_dir, eval_tensors
from mixquant_core.data.image_sets import open_calibration_folder
from mixquant_core.data.load import load_tensors
from mixquant_core.evaluations import Evaluations
from mixquant_core.models.registry import load_model
from mixquant_core.workspace import Workspace

RANGES = {"loss": ("per-channel", "loss"), "per-channel": ("per-channel", "weights"),
          "per-channel-mse": ("per-channel-mse", "weights")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranges", default="loss,per-channel,per-channel-mse")
    ap.add_argument("--only", help="only the points whose label contains this text")
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--cache", default="/tmp/mixquant_val1300.pt")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    loaded = load_model("efficientnet_lite0")
    data = eval_tensors(loaded, Path(args.cache))
    calib = load_tensors(open_calibration_folder(str(data_dir("imagenet-calib-1000")), args.calib_images),
                         loaded.preprocess)
    with open(args.out, "a") as out:
        for key in args.ranges.split(","):
            quantizer, ranges = RANGES[key]
            workspaces = {}
            for label, cands, avg in POINTS:
                if args.only and args.only not in label:
                    continue
                if cands not in workspaces:  # one Workspace (one range search) per candidate set
                    t0 = time.perf_counter()
                    ws = Workspace(loaded, quantizer, bits=cands, device="cpu", ranges=ranges, calib=calib)
                    ws.calibrate()
                    workspaces[cands] = (ws, time.perf_counter() - t0)
                ws, range_seconds = workspaces[cands]
                t0 = time.perf_counter()
                bits = ws.uniform(4) if avg is None else ws.budget_bits("fisher", avg_bits=avg, calib=calib)
                plan_seconds = time.perf_counter() - t0
                m = Evaluations(ws).evaluate_plan(ws.plan_from_bits(bits), data)
                rec = {"point": label, "ranges": key, "avg_bits": ws.size(bits).avg_bits, **m.summary(),
                       "range_seconds": round(range_seconds, 1), "plan_seconds": round(plan_seconds, 1),
                       "calib_images": len(calib), "threads": torch.get_num_threads()}
                out.write(json.dumps(rec) + "\n")
                out.flush()
                print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
