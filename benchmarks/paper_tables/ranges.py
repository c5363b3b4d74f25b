"""Range choice on EfficientNet-Lite0: min/max vs MSE-clipped ranges (issue #15).

At each average bit-width of ``--levels``, three plans per quantizer, all round-to-nearest:
uniform b bits, the QEM rule at <= b average bits (``mixquant search --max-avg-bits b``) and the
Fisher-budgeted allocation at b average bits (``mixquant allocate --cost fisher --calib DIR
--calib-images 64 --avg-bits b``), each evaluated on all 1,300 validation images (each distinct
plan once). ``--part recon`` reconstructs the Fisher-budgeted plans of the first quantizer of
``--recon-quantizer`` (AdaRound + BRECQ blocks on that quantizer's grid) and evaluates them.
Rows are appended to a JSON-lines file as they finish; the plans are written beside it:

  python benchmarks/paper_tables/ranges.py --part rtn   --levels 4,3,5,6 --out OUT/ranges.jsonl
  python benchmarks/paper_tables/ranges.py --part recon --levels 4,3     --out OUT/ranges.jsonl
  python benchmarks/paper_tables/ranges.py --render OUT/ranges.jsonl    # the table in docs/RESULTS.md
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
from mixquant_core.evaluation.evaluate import evaluate
from mixquant_core.export.packed import save_quantized, size_report
from mixquant_core.models.registry import load_model
from mixquant_core.plans.plan import Plan
from mixquant_core.quant.qe import DEFAULT_BITS, normalize_bits
from mixquant_core.recon.reconstruct import ReconConfig, quantized_applied, recon_metadata, reconstruct_plan
from mixquant_core.evaluations import Evaluations
from mixquant_core.workspace import Workspace
from table1 import eval_tensors, row

QUANTIZERS = ("per-channel", "per-channel-mse")


def calib_dir() -> str:
    return str(Path(os.environ["MIXQUANT_DATA"]) / "imagenet-calib-1000")


def fisher_plan(ws, b: int, calib):
    bits = ws.budget_bits("fisher", avg_bits=b, calib=calib)
    return ws.plan_from_bits(bits, extra={"allocation": "fisher", "fisher_images": len(calib)})


def plans(ws, b: int, calib, only_fisher: bool = False):
    """(label, plan): uniform b, QEM rule at <= b and Fisher-budgeted at b average bits; with
    candidate bit-widths other than 8..2 the label says so."""
    tag = "" if ws.bits == DEFAULT_BITS else f" (bits {','.join(map(str, ws.bits))})"
    fisher = [(f"Fisher-budgeted {b} avg bits{tag}", fisher_plan(ws, b, calib))]
    if only_fisher:
        return fisher
    return [(f"uniform {b}", ws.plan_from_bits(ws.uniform(b))),
            (f"QEM rule <= {b} avg bits{tag}", ws.plan(ws.qem_for_budget(avg_bits=b)))] + fisher


def write(out, rec: dict) -> None:
    out.write(json.dumps(rec) + "\n")
    out.flush()
    print(f"{rec['plan']:<34} {rec.get('quantizer', ''):<16} {rec['avg_bits']:5.2f} bits  top-1 {rec['top1']:6.2f} %",
          flush=True)


def plan_path(label: str, quantizer: str, folder: Path) -> Path:
    return folder / f"ranges_{quantizer}_{label.replace(' ', '_').replace('<=', 'le')}.json"


def save_plan(plan, label: str, quantizer: str, folder: Path) -> None:
    plan.save(str(plan_path(label, quantizer, folder)))


def run_rtn(args, loaded, data, fisher_calib, out) -> None:
    if args.float32:
        t0 = time.perf_counter()
        ws = Workspace(loaded, QUANTIZERS[0], device="cpu")
        m = Evaluations(ws).evaluate_bits(None, data)
        write(out, {"plan": "float32", "method": "none", "avg_bits": 32.0, "size_mb": ws.float_bytes / 1e6,
                    **m.to_dict(), "eval_seconds": round(time.perf_counter() - t0, 1)})
    for b in args.levels:
        for quantizer in args.quantizers:
            ws = workspaces(loaded, quantizer, args.bits)
            for label, plan in plans(ws, b, fisher_calib(), args.only_fisher):
                t0 = time.perf_counter()
                m = Evaluations(ws).evaluate_plan(plan, data)  # the workspace evaluates each distinct plan once
                save_plan(plan, label, quantizer, Path(args.out).parent)
                write(out, {**row(label, plan, f"round-to-nearest ({quantizer})", m), "quantizer": quantizer,
                            "eval_seconds": round(time.perf_counter() - t0, 1)})


_WORKSPACES: dict = {}


def workspaces(loaded, quantizer: str, bits=DEFAULT_BITS) -> Workspace:
    """One workspace per quantizer, kept across levels: its QE and Fisher tables are computed once."""
    if quantizer not in _WORKSPACES:
        _WORKSPACES[quantizer] = Workspace(loaded, quantizer, bits, device="cpu")
    return _WORKSPACES[quantizer]


def run_recon(args, loaded, data, fisher_calib, out) -> None:
    quantizer = args.recon_quantizer
    ws = workspaces(loaded, quantizer, args.bits)
    calib = load_tensors(open_calibration_folder(calib_dir(), args.calib_images), loaded.preprocess).inputs()
    cfg = ReconConfig(iters=args.iters, batch_size=args.batch_size, lr=args.lr, scheme=quantizer, device="cpu", seed=0)
    for b in args.levels:
        tag = "" if ws.bits == DEFAULT_BITS else f" (bits {','.join(map(str, ws.bits))})"
        label = f"Fisher-budgeted {b} avg bits{tag}"
        saved = plan_path(label, quantizer, Path(args.out).parent)  # the rtn part's plan: no second Fisher table
        plan = Plan.load(str(saved)) if saved.is_file() else fisher_plan(ws, b, fisher_calib())
        result = reconstruct_plan(loaded.model, plan, calib, cfg)
        path = Path(args.export_dir) / f"lite0_ranges_recon_{quantizer}_{b}.safetensors"
        save_quantized(path, loaded.model, plan, result.layers, recon_metadata(result, len(calib)))
        size = size_report(path, loaded.model)
        t0 = time.perf_counter()
        with quantized_applied(loaded.model, result.layers):
            m = evaluate(loaded.model, data, "cpu")
        extra = {"quantizer": quantizer, "recon_seconds": round(result.seconds, 1), "iters": cfg.iters,
                 "batch_size": cfg.batch_size, "calib_images": len(calib), "lr": cfg.lr,
                 "device": f"cpu ({args.threads} thread, shared machine)",
                 "block_mse_nearest": sum(x.mse_nearest for x in result.blocks),
                 "block_mse_learned": sum(x.mse_learned for x in result.blocks),
                 "file_bytes": size["bytes"], "accounted_bytes": size["accounted_bytes"],
                 "eval_seconds": round(time.perf_counter() - t0, 1)}
        write(out, row(label, plan, f"reconstruction (AdaRound + BRECQ blocks, {quantizer} grid)", m, extra))


def render(path: str) -> str:
    """The docs/RESULTS.md table from the JSON lines: one row per level and plan kind, min/max
    against MSE ranges side by side (the last record of each wins)."""
    recs = [json.loads(line) for line in open(path) if line.strip()]
    f32 = next(r for r in recs if r["plan"] == "float32")
    cell = {}
    for r in recs:
        kind = "recon" if r["method"].startswith("reconstruction") else r.get("quantizer")
        cell[(r["plan"], kind)] = r
    lines = [f"| plan | avg bits (first) | size MB | min/max (per-channel) top-1 % | MSE (per-channel-mse) top-1 % | "
             f"MSE + reconstruction top-1 % |", "|---|---|---|---|---|---|"]
    lines.append(f"| float32 | 32 | {f32['size_mb']:.2f} | {f32['top1']:.2f} | | |")
    for plan in dict.fromkeys(r["plan"] for r in recs if r["plan"] != "float32"):
        got = [cell.get((plan, k)) for k in ("per-channel", "per-channel-mse", "recon")]
        ref = next(g for g in got if g)
        top1 = [f"{g['top1']:.2f} ({g['top1'] - f32['top1']:+.2f}; {g['avg_bits']:.2f} b)" if g else "-" for g in got]
        lines.append(f"| {plan} | {ref['avg_bits']:.2f} | {ref['size_mb']:.2f} | {' | '.join(top1)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--render", metavar="JSONL", help="only print the markdown table of a results file")
    ap.add_argument("--part", choices=("rtn", "recon"))
    ap.add_argument("--out")
    ap.add_argument("--levels", default="4,3,5,6", type=lambda s: [int(t) for t in s.split(",")])
    ap.add_argument("--quantizers", default=",".join(QUANTIZERS), type=lambda s: s.split(","))
    ap.add_argument("--recon-quantizer", default="per-channel-mse")
    ap.add_argument("--bits", default=DEFAULT_BITS, type=lambda s: normalize_bits(s.split(",")),
                    help="candidate bit-widths (default 8..2)")
    ap.add_argument("--only-fisher", action="store_true", help="only the Fisher-budgeted plans")
    ap.add_argument("--float32", action="store_true", help="also the float32 row")
    ap.add_argument("--fisher-images", type=int, default=64, help="calibration images for the Fisher table")
    ap.add_argument("--calib-images", type=int, default=128, help="calibration images for reconstruction")
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--lr", type=float, default=2e-2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--cache", default="/tmp/mixquant_val1300.pt")
    ap.add_argument("--export-dir", default="/tmp")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.render:
        print(render(args.render))
        return
    if not args.part or not args.out:
        ap.error("--part and --out are needed (or --render)")
    torch.set_num_threads(args.threads)
    loaded = load_model("efficientnet_lite0")
    data = eval_tensors(loaded, Path(args.cache))
    held = []

    def fisher_calib():  # decoded once, only where a Fisher table is computed
        if not held:
            held.append(load_tensors(open_calibration_folder(calib_dir(), args.fisher_images), loaded.preprocess))
        return held[0]

    with open(args.out, "a") as out:
        (run_rtn if args.part == "rtn" else run_recon)(args, loaded, data, fisher_calib, out)


if __name__ == "__main__":
    main()
