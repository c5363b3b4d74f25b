"""What the rounding-aware allocation costs (issue #22 part 3): wall time of the Fisher allocation
and of the extra ``fisher-gptq`` cost table (one float32 Hessian pass, one GPTQ solve per layer and
candidate bit-width) on EfficientNet-Lite0, per-channel grid, candidates 8..2, 3.0 average bits,
on min/max and on loss-aware ranges.

    MIXQUANT_DATA=../../../shared/data python allocation_cost.py [--calib-images 64] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from mixquant_core.data.image_sets import open_calibration_folder
from mixquant_core.data.load import load_tensors
from mixquant_core.models.registry import load_model
from mixquant_core.workspace import Workspace

BITS = (8, 7, 6, 5, 4, 3, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--avg-bits", type=float, default=3.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model("efficientnet_lite0")
    folder = os.path.join(os.environ["MIXQUANT_DATA"], "imagenet-calib-1000")
    calib = load_tensors(open_calibration_folder(folder, args.calib_images), loaded.preprocess)
    for ranges in ("weights", "loss"):
        ws = Workspace(loaded, "per-channel", bits=BITS, device="cpu", ranges=ranges, calib=calib)
        t = time.perf_counter()
        ws.budget_bits("fisher", avg_bits=args.avg_bits, calib=calib)  # Fisher table (+ loss-aware ranges)
        fisher = time.perf_counter() - t
        t = time.perf_counter()
        ws.budget_bits("fisher-gptq", avg_bits=args.avg_bits, calib=calib)  # the GPTQ cost table on top
        extra = time.perf_counter() - t
        print(json.dumps({"ranges": ranges, "calib_images": args.calib_images, "fisher_s": round(fisher, 1),
                          "fisher_gptq_extra_s": round(extra, 1)}), flush=True)


if __name__ == "__main__":
    main()
