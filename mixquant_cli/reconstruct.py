"""CLI of reconstruction and export: ``mixquant reconstruct``, ``mixquant export``, ``mixquant load``."""
from __future__ import annotations

import json
import os
import sys

from mixquant_core.errors import MixQuantError
from mixquant_core.quant.quantizers import QUANTIZERS
from mixquant_core.recon.reconstruct import SCHEMES

DEFAULT_CALIB_IMAGES = 1024  # BRECQ's usual calibration set size


def _add_common(p, compute: bool = True) -> None:
    from mixquant_core.models.registry import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help=f"registry name or model file (default {DEFAULT_MODEL})")
    p.add_argument("--arch", help="architecture (registry name) of a state-dict file")
    p.add_argument("--allow-pickle", action="store_true", help="allow files that need pickled code (only if you trust them)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--plan", help="plan JSON (from `mixquant search`)")
    g.add_argument("--uniform", type=int, metavar="BITS", help="every layer at BITS bits instead of a plan")
    p.add_argument("--quantizer", default="asymmetric", choices=tuple(QUANTIZERS),
                   help="quantizer of a --uniform plan (default asymmetric)")
    if compute:
        p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(subparsers, commands) -> None:
    p = subparsers.add_parser("reconstruct", help="learn each layer's rounding (AdaRound, BRECQ block-wise) for a plan")
    _add_common(p)
    p.add_argument("--calib", required=True, help="calibration image folder (e.g. imagenet-calib-1000)")
    p.add_argument("--calib-images", type=int, default=DEFAULT_CALIB_IMAGES,
                   help=f"calibration images, spread over the folder (default {DEFAULT_CALIB_IMAGES})")
    p.add_argument("--iters", type=int, default=500, help="optimisation steps per block (default 500; BRECQ: 20000)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate of the rounding variables (default 0.01)")
    p.add_argument("--scheme", default=SCHEMES[0], choices=SCHEMES,
                   help=f"base quantizer whose grid the rounding is learned on (default {SCHEMES[0]}: "
                        "affine per output channel, range clipped for least MSE, as BRECQ)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="write the reconstructed model here (.safetensors export file)")
    commands["reconstruct"] = cmd_reconstruct

    p = subparsers.add_parser("export", help="write the quantized model (packed codes + scales + plan) as safetensors")
    _add_common(p, compute=False)
    p.add_argument("--reconstructed", help="a file from `mixquant reconstruct` (default: round-to-nearest codes)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    commands["export"] = cmd_export

    p = subparsers.add_parser("load", help="load an export file into its model, check it, and evaluate it")
    p.add_argument("file", help="a .safetensors file from `mixquant export` or `mixquant reconstruct`")
    p.add_argument("--model", help="registry name (default: the one recorded in the file)")
    p.add_argument("--data", help="evaluation folder; omit to only check the file")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    commands["load"] = cmd_load


def _plan_and_model(args):
    from mixquant_core.models.registry import load_model
    from mixquant_core.plans.plan import Plan

    plan = Plan.load(args.plan) if args.plan else None  # a bad plan fails before any slow work
    loaded = load_model(args.model, arch=args.arch, allow_pickle=args.allow_pickle)
    if plan is None:
        from mixquant_core.workspace import Workspace

        ws = Workspace(loaded, args.quantizer, bits=[args.uniform], device="cpu")
        plan = ws.plan_from_bits(ws.uniform(args.uniform), extra={"uniform": args.uniform})
    plan.check_against(loaded.model)
    return loaded, plan


def _out_dir_ok(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise MixQuantError(f"cannot write '{path}': folder '{folder}' does not exist")


def cmd_reconstruct(args) -> None:
    from .main import calibration_tensors, progress_bar
    from mixquant_core.export.packed import save_quantized, size_report
    from mixquant_core.recon.reconstruct import ReconConfig, reconstruct_plan, recon_metadata

    _out_dir_ok(args.out)
    if args.calib_images < 1:  # before the (slow) model load
        raise MixQuantError(f"--calib-images must be at least 1, got {args.calib_images}")
    loaded, plan = _plan_and_model(args)
    show = not args.no_progress
    calib = calibration_tensors(args.calib, args.calib_images, loaded.preprocess, show)
    cfg = ReconConfig(iters=args.iters, batch_size=args.batch_size, scheme=args.scheme, seed=args.seed, device=args.device)
    if args.lr is not None:
        cfg.lr = args.lr
    with progress_bar(show, "reconstruct") as cb:
        result = reconstruct_plan(loaded.model, plan, calib.images, cfg, cb)
    size = save_quantized(args.out, loaded.model, plan, result.layers, recon_metadata(result, len(calib)))
    report = size_report(args.out, loaded.model)
    before = sum(b.mse_nearest for b in result.blocks)
    after = sum(b.mse_learned for b in result.blocks)
    if args.json:
        print(json.dumps({"out": args.out, "bytes": size, "seconds": result.seconds, "calib_images": len(calib),
                          "iters": cfg.iters, "device": str(cfg.device), **report,
                          "blocks": [b.__dict__ for b in result.blocks]}, indent=2))
    else:
        print(f"wrote {args.out}: {size} bytes ({report['difference_pct']:+.2f} % vs size accounting); "
              f"{len(result.blocks)} blocks x {cfg.iters} iterations on {len(calib)} images in {result.seconds:.0f} s; "
              f"summed block error {before:.4g} (nearest) -> {after:.4g} (learned)")


def cmd_export(args) -> None:
    from mixquant_core.export.packed import file_layers, rtn_layers, save_quantized, size_report

    _out_dir_ok(args.out)
    loaded, plan = _plan_and_model(args)
    extra = None
    if args.reconstructed:
        qf, _ = file_layers(args.reconstructed, loaded.model, plan)
        layers = qf.layers
        extra = {k: v for k, v in qf.metadata.items() if k == "reconstruction"}
    else:
        layers = rtn_layers(loaded.model, plan)
    size = save_quantized(args.out, loaded.model, plan, layers, extra)
    report = size_report(args.out, loaded.model)
    if args.json:
        print(json.dumps({"out": args.out, **report}, indent=2))
    else:
        print(f"wrote {args.out}: {size} bytes, size accounting {report['accounted_bytes']} bytes "
              f"({report['difference_pct']:+.2f} %), {report['scheme']} codes, "
              f"{plan.size['avg_bits']:.2f} average bits")


def cmd_load(args) -> None:
    from .main import progress_bar
    from mixquant_core.data.image_sets import load_tensors, open_image_folder
    from mixquant_core.evaluation.evaluate import evaluate, resolve_device
    from mixquant_core.export.packed import load_quantized_, peek_plan
    from mixquant_core.models.registry import load_model

    plan = peek_plan(args.file)
    loaded = load_model(args.model or plan.model.get("name", ""))
    qf = load_quantized_(loaded.model, args.file)
    out = {"file": args.file, "model": loaded.name, "layers": len(qf.layers), "scheme": qf.scheme,
           "avg_bits": qf.plan.size.get("avg_bits")}
    if args.data:
        images = open_image_folder(args.data).subset(args.limit)
        show = not args.no_progress
        with progress_bar(show, "decode") as cb:
            data = load_tensors(images, loaded.preprocess.transform(), cb)
        device = resolve_device(args.device)
        with progress_bar(show, "evaluate") as cb:
            m = evaluate(loaded.model.to(device), data, device, progress=cb)
        out.update(m.to_dict())
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        line = f"{args.file}: {out['layers']} quantized layers ({out['scheme']}) load into {loaded.name}"
        if args.data:
            line += f"; top-1 {out['top1']:.2f} %  top-5 {out['top5']:.2f} %  loss {out['loss']:.4f}  ({out['images']} images)"
        print(line)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run `mixquant reconstruct|export|load`")
