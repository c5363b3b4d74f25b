"""Table 1 style on EfficientNet-Lite0: uniform 4/3/2-bit weights vs MixQuant plans at no more
average bits, each with round-to-nearest and with reconstruction (AdaRound + BRECQ blocks).

Every row uses the same base quantizer, asymmetric per output channel: round-to-nearest rows with
min/max ranges (quantizers.py ``per-channel``), reconstructed rows with MSE-clipped ranges and
learned rounding (reconstruct.py). Rows are appended to a JSON-lines file as they finish, so the
parts can run in parallel:

  python benchmarks/paper_tables/table1.py --part rtn           --out OUT/table1.jsonl
  python benchmarks/paper_tables/table1.py --part uniform-recon --out OUT/table1.jsonl
  python benchmarks/paper_tables/table1.py --part plan-recon    --out OUT/table1.jsonl

``--part recon --levels 4`` reconstructs both rows of one level in one process, and a MixQuant
plan that equals the uniform plan (as it does for Lite0 per channel) is reconstructed once and
reported under both labels.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from mixquant_core.data.image_sets import open_image_folder
from mixquant_core.data.load import load_tensors
from mixquant_core.evaluation.evaluate import evaluate
from mixquant_core.export.packed import save_quantized, size_report
from mixquant_core.models.registry import load_model
from mixquant_core.recon.reconstruct import ReconConfig, quantized_applied, recon_metadata, reconstruct_plan
from mixquant_core.data.image_sets import open_calibration_folder
from mixquant_core.evaluations import Evaluations
from mixquant_core.workspace import Workspace

QUANTIZER = "per-channel"
LEVELS = (2, 3, 4)  # lowest first: reconstruction matters most there


def eval_tensors(loaded, cache: Path):
    """The 1,300 validation images, decoded once and shared between the parts through ``cache``."""
    if cache.is_file():
        return torch.load(cache, weights_only=False)
    data_dir = Path(os.environ["MIXQUANT_DATA"]) / "imagenet-val-1300"
    data = load_tensors(open_image_folder(data_dir), loaded.preprocess)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    torch.save(data, tmp)
    tmp.replace(cache)
    return data


def plans(ws, levels=LEVELS, paper_qe=False):
    """(label, plan) for uniform b bits and the MixQuant plan at <= b average bits.

    With ``paper_qe`` also the MixQuant plan chosen with the paper's QE (per-tensor asymmetric
    round-to-nearest) at <= b average bits, then quantized with the per-channel base quantizer
    like every other row: on Lite0 that plan is mixed where the per-channel one is uniform."""
    out = []
    paper = Workspace(ws.loaded, "asymmetric", device="cpu") if paper_qe else None
    for b in levels:
        out.append((f"uniform {b}", ws.plan_from_bits(ws.uniform(b))))
        qem = ws.qem_for_budget(avg_bits=b)
        out.append((f"MixQuant <= {b} avg bits", ws.plan(qem)))
        if paper is not None:
            qem = paper.qem_for_budget(avg_bits=b)
            out.append((f"MixQuant (per-tensor QE) <= {b} avg bits",
                        ws.plan_from_bits(paper.bits_for([qem])[0], qem, extra={"qe_quantizer": "asymmetric"})))
    return out


def row(label, plan, method, metrics, extra=None):
    bits = sorted(set(plan.bits.values()))
    return {"plan": label, "method": method, "qem": plan.qem, "bit_set": ", ".join(map(str, bits)),
            "avg_bits": plan.size["avg_bits"], "size_mb": plan.size["plan_mb"], **metrics.to_dict(), **(extra or {})}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("rtn", "uniform-recon", "plan-recon", "recon"), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--lr", type=float, default=2e-2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--calib-images", type=int, default=128)
    ap.add_argument("--cache", default="/tmp/mixquant_val1300.pt")
    ap.add_argument("--export-dir", default="/tmp")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)), help="uniform bit-widths, e.g. 4,3")
    ap.add_argument("--paper-qe", action="store_true", help="also the plans chosen with the per-tensor QE")
    ap.add_argument("--only", help="only the rows whose label contains this text")
    ap.add_argument("--fisher", action="store_true", help="also the Fisher-budgeted plans at the same average bits")
    ap.add_argument("--fisher-images", type=int, default=64, help="calibration images for the Fisher table")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: parts run side by side)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model("efficientnet_lite0")
    ws = Workspace(loaded, QUANTIZER, device="cpu")
    levels = tuple(int(b) for b in args.levels.split(","))
    todo = plans(ws, levels, args.paper_qe)
    calib_list = None  # listed only by the parts that use calibration images
    if args.fisher or args.part != "rtn":
        calib_list = open_calibration_folder(str(Path(os.environ["MIXQUANT_DATA"]) / "imagenet-calib-1000"),
                                             args.calib_images)
    if args.fisher:  # the budgeted allocation of least Fisher-weighted error (#6) at the same budgets
        fisher_calib = load_tensors(calib_list.subset(args.fisher_images), loaded.preprocess)
        for b in levels:
            bits = ws.budget_bits("fisher", avg_bits=b, calib=fisher_calib)
            todo.append((f"Fisher-budgeted <= {b} avg bits",
                         ws.plan_from_bits(bits, extra={"allocation": "fisher", "fisher_images": len(fisher_calib)})))
    if args.only:
        todo = [(label, plan) for label, plan in todo if args.only in label]
    out = open(args.out, "a")
    if args.part == "rtn":
        data = eval_tensors(loaded, Path(args.cache))
        rows = ([] if args.only else [("float32", None)]) + todo
        for label, plan in rows:
            t0 = time.perf_counter()
            bits = None if plan is None else [plan.bits[l.name] for l in ws.layers]
            m = Evaluations(ws).evaluate_bits(bits, data)
            if plan is None:
                rec = {"plan": "float32", "method": "none", "avg_bits": 32.0, "size_mb": ws.float_bytes / 1e6, **m.to_dict()}
            else:
                rec = row(label, plan, "round-to-nearest (min/max per channel)", m)
            rec["eval_seconds"] = round(time.perf_counter() - t0, 1)
            out.write(json.dumps(rec) + "\n")
            out.flush()
        return
    wanted = [(l, p) for l, p in todo
              if args.part == "recon" or l.startswith("uniform") == (args.part == "uniform-recon")]
    seen = {}
    calib = load_tensors(calib_list, loaded.preprocess).inputs()
    cfg = ReconConfig(iters=args.iters, batch_size=args.batch_size, lr=args.lr, device="cpu", seed=0)
    for label, plan in wanted:
        key = tuple(plan.bits.values())
        if key in seen:  # e.g. the <= 2-bit MixQuant plan is uniform 2-bit: nothing new to learn
            rec = dict(seen[key], plan=label, qem=plan.qem, same_plan_as=seen[key]["plan"])
            out.write(json.dumps(rec) + "\n")
            out.flush()
            continue
        result = reconstruct_plan(loaded.model, plan, calib, cfg)
        path = Path(args.export_dir) / f"lite0_recon_{label.replace(' ', '_').replace('<=', 'le')}.safetensors"
        save_quantized(path, loaded.model, plan, result.layers, recon_metadata(result, len(calib)))
        size = size_report(path, loaded.model)
        data = eval_tensors(loaded, Path(args.cache))
        t0 = time.perf_counter()
        with quantized_applied(loaded.model, result.layers):
            m = evaluate(loaded.model, data, "cpu")
        extra = {"recon_seconds": round(result.seconds, 1), "iters": cfg.iters, "batch_size": cfg.batch_size,
                 "calib_images": len(calib), "device": "cpu (1 thread, shared)", "lr": cfg.lr,
                 "block_mse_nearest": sum(b.mse_nearest for b in result.blocks),
                 "block_mse_learned": sum(b.mse_learned for b in result.blocks),
                 "file_bytes": size["bytes"], "accounted_bytes": size["accounted_bytes"],
                 "eval_seconds": round(time.perf_counter() - t0, 1)}
        rec = row(label, plan, "reconstruction (AdaRound + BRECQ blocks, MSE-clipped per channel)", m, extra)
        seen[key] = rec
        out.write(json.dumps(rec) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
