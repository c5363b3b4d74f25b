"""CLI of reconstruction and export: ``mixquant reconstruct``, ``mixquant export``, ``mixquant load``."""
from __future__ import annotations

import argparse
import json
import os
import sys

from mixquant_core.errors import MixQuantError

from .choices import (DEFAULT_GPTQ_INPUTS, DEFAULT_MODEL, GPTQ_GRIDS, GPTQ_INPUTS, INT8_WEIGHTS, QUANTIZERS,
                      RECON_METHODS, RECON_SCHEMES)
from .inputs import calibration_tensors, plan_notice
from .options import add_engine_arg, add_json_arg, add_progress_args, add_store_args, add_trust_code, number
from .output import accuracy_text, check_out, notice
from .progress import mode_of, progress

DEFAULT_CALIB_IMAGES = 1024  # BRECQ's usual calibration set size


def _add_common(p, compute: bool = True) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"registry name or model file (default {DEFAULT_MODEL})")
    p.add_argument("--arch", help="architecture (registry name) of a state-dict file")
    add_trust_code(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--plan", help="plan JSON (from `mixquant search`)")
    g.add_argument("--uniform", type=number("bit_width"), metavar="BITS", help="every layer at BITS bits instead of a plan")
    p.add_argument("--quantizer", default="asymmetric", choices=QUANTIZERS,
                   help="quantizer of a --uniform plan (default asymmetric)")
    if compute:
        p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    add_json_arg(p)
    add_progress_args(p)


def register(subparsers) -> None:
    p = subparsers.add_parser("reconstruct", help="choose each layer's rounding for a plan: AdaRound fitted block-wise "
                                                   "(BRECQ), GPTQ, or BRECQ started from GPTQ")
    _add_common(p)
    p.add_argument("--method", default=RECON_METHODS[0], choices=RECON_METHODS,
                   help="brecq (default): AdaRound's learned rounding fitted block by block; gptq: GPTQ's "
                        "Hessian-based rounding, one pass, no fitting (--iters, --lr unused); gptq+brecq: BRECQ "
                        "started from GPTQ's rounding")
    p.add_argument("--damp", type=number("damp"), default=None,
                   help="GPTQ dampening, a fraction of the Hessian's mean diagonal (default 0.01, the paper's)")
    p.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=True,
                   help="GPTQ: quantize columns in descending Hessian-diagonal order (default; measured better on "
                        "Lite0) or, with --no-act-order, in natural order")
    p.add_argument("--gptq-inputs", default=DEFAULT_GPTQ_INPUTS, choices=GPTQ_INPUTS,
                   help="GPTQ: the inputs each layer is solved on. stage: a block's layers from one run of it; "
                        "layer: one layer at a time, after the layers before it; float-target: as layer, and "
                        "fitted to the float32 model's output, so it also corrects the error of the layers "
                        f"before it (default {DEFAULT_GPTQ_INPUTS})")
    p.add_argument("--gptq-grid", default=GPTQ_GRIDS[0], choices=GPTQ_GRIDS,
                   help="GPTQ: the grid of each output channel. best (default): GPTQ on the plan's grid and on the "
                        "scheme's min/max and MSE-clipped grids, each channel keeping the one with the least output "
                        "error on the calibration images; plan: the plan's grid only")
    p.add_argument("--calib", required=True, help="calibration image folder (e.g. imagenet-calib-1000)")
    p.add_argument("--calib-images", type=number("calib_images"), default=DEFAULT_CALIB_IMAGES,
                   help=f"calibration images, spread over the folder (default {DEFAULT_CALIB_IMAGES})")
    p.add_argument("--iters", type=number("iters"), default=500, help="optimisation steps per block (default 500; BRECQ: 20000)")
    p.add_argument("--batch-size", type=number("batch_size"), default=32)
    p.add_argument("--lr", type=number("lr"), default=None, help="Adam learning rate of the rounding variables (default 0.01)")
    p.add_argument("--scheme", default=RECON_SCHEMES[0], choices=RECON_SCHEMES,
                   help=f"base quantizer whose grid the rounding is learned on (default {RECON_SCHEMES[0]}: "
                        "affine per output channel, range clipped for least MSE, as BRECQ)")
    p.add_argument("--seed", type=number("seed"), default=0)
    p.add_argument("--out", required=True, help="write the reconstructed model here (.safetensors export file)")
    p.set_defaults(run=cmd_reconstruct)

    p = subparsers.add_parser("export", help="write the quantized model (packed codes + scales + plan) as safetensors or ONNX")
    _add_common(p, compute=False)
    p.add_argument("--reconstructed", help="a file from `mixquant reconstruct` (default: round-to-nearest codes)")
    p.add_argument("--format", choices=("safetensors", "onnx"), default=None,
                   help="safetensors (packed codes, runs in mixquant) or onnx (bit-packed codes unpacked by standard "
                        "ops, integer kernels for W+A plans; runs in ONNX Runtime and OpenVINO); default: from --out's "
                        "suffix, else safetensors")
    p.add_argument("--int8-weights", choices=INT8_WEIGHTS, default=INT8_WEIGHTS[0],
                   help="ONNX W+A exports: how integer layers store 8-bit symmetric codes. exact (default): as "
                        "uint8 around 128 where int8 could saturate the u8 x s8 kernels of CPUs without VNNI "
                        "(AVX2), so the file computes the plan's numbers on every CPU; signed: int8 always, "
                        "the fastest file (quantize_static's layout), which can lose accuracy on AVX2-only CPUs")
    p.add_argument("--out", required=True, help="output .safetensors or .onnx file")
    p.set_defaults(run=cmd_export)

    p = subparsers.add_parser("load", help="load an export file into its model, check it, and evaluate it")
    p.add_argument("file", help="a .safetensors file from `mixquant export` or `mixquant reconstruct`, or an .onnx "
                                "file from `mixquant export --format onnx` (evaluated by ONNX Runtime itself)")
    p.add_argument("--model", help="registry name or model file (default: the registry model recorded in the file)")
    p.add_argument("--arch", help="architecture (registry name) of a state-dict --model file")
    add_trust_code(p)
    p.add_argument("--data", help="evaluation folder; omit to only check the file")
    p.add_argument("--limit", type=number("limit"), default=None, help="evaluate the first N images only (N >= 1)")
    p.add_argument("--device", default="auto")
    add_store_args(p)
    add_engine_arg(p)
    add_json_arg(p)
    add_progress_args(p)
    p.set_defaults(run=cmd_load)


def _plan_and_model(args):
    from mixquant_core.models.registry import load_model
    from mixquant_core.plans.plan import Plan

    plan = Plan.load(args.plan) if args.plan else None  # a bad plan fails before any slow work
    loaded = load_model(args.model, arch=args.arch, trust_code=args.trust_code)
    if plan is None:
        from mixquant_core.workspace import Workspace

        ws = Workspace(loaded, args.quantizer, bits=[args.uniform], device="cpu")
        plan = ws.plan_from_bits(ws.uniform(args.uniform), extra={"uniform": args.uniform})
    plan_notice(plan, loaded.model)
    return loaded, plan


def cmd_reconstruct(args) -> None:
    from mixquant_core.export.packed import check_metadata_fits, save_quantized, size_report
    from mixquant_core.recon.reconstruct import ReconConfig, reconstruct_plan, recon_metadata

    check_out(args, args.plan, args.calib)
    if args.calib_images < 1:  # before the (slow) model load
        raise MixQuantError(f"--calib-images must be at least 1, got {args.calib_images}")
    loaded, plan = _plan_and_model(args)
    check_metadata_fits(plan)  # before the (long) reconstruction, not after it
    mode = mode_of(args)
    calib = calibration_tensors(args.calib, args.calib_images, loaded.preprocess, mode)
    cfg = ReconConfig(iters=args.iters, batch_size=args.batch_size, scheme=args.scheme, seed=args.seed, device=args.device,
                      method=args.method, act_order=args.act_order, gptq_inputs=args.gptq_inputs,
                      gptq_grid=args.gptq_grid)
    if args.lr is not None:
        cfg.lr = args.lr
    if args.damp is not None:
        cfg.damp = args.damp
    with progress(mode, f"reconstruct ({args.method})") as cb:
        result = reconstruct_plan(loaded.model, plan, calib.inputs(), cfg, cb)
    size = save_quantized(args.out, loaded.model, plan, result.layers, recon_metadata(result, len(calib)))
    report = size_report(args.out, loaded.model)
    before = sum(b.mse_nearest for b in result.blocks)
    after = sum(b.mse_learned for b in result.blocks)
    if args.json:
        print(json.dumps({"out": args.out, "bytes": size, "seconds": result.seconds, "calib_images": len(calib),
                          "iters": cfg.iters, "method": cfg.method, "device": str(cfg.device), **report,
                          "blocks": [b.__dict__ for b in result.blocks], "notes": result.notes}, indent=2))
    else:
        work = f"{len(result.blocks)} blocks" if cfg.method == "gptq" else f"{len(result.blocks)} blocks x {cfg.iters} iterations"
        print(f"wrote {args.out}: {size} bytes ({report['difference_pct']:+.2f} % vs size accounting); "
              f"{cfg.method}: {work} on {len(calib)} images in {result.seconds:.0f} s; "
              f"summed block error {before:.4g} (nearest) -> {after:.4g} ({cfg.method})")
        for line in result.notes:
            print(f"note: {line}")


def cmd_export(args) -> None:
    from mixquant_core.export.packed import file_layers, rtn_layers, save_quantized, size_report

    check_out(args, args.plan, args.reconstructed)
    loaded, plan = _plan_and_model(args)
    extra = None
    if args.reconstructed:
        qf, _ = file_layers(args.reconstructed, loaded.model, plan)
        layers = qf.layers
        extra = {k: v for k, v in qf.metadata.items() if k == "reconstruction"}
    else:
        layers = rtn_layers(loaded.model, plan)
    if _export_format(args) == "onnx":
        return _export_onnx(args, loaded, plan, layers)
    size = save_quantized(args.out, loaded.model, plan, layers, extra)
    report = size_report(args.out, loaded.model)
    if args.json:
        print(json.dumps({"out": args.out, **report}, indent=2))
    else:
        print(f"wrote {args.out}: {size} bytes, size accounting {report['accounted_bytes']} bytes "
              f"({report['difference_pct']:+.2f} %), {report['scheme']} codes, "
              f"{plan.size['avg_bits']:.2f} average bits")


def _export_format(args) -> str:
    if args.format:
        return args.format
    return "onnx" if args.out.lower().endswith(".onnx") else "safetensors"


def _export_onnx(args, loaded, plan, layers) -> None:
    from mixquant_core.export.onnx import build_onnx, onnx_size_report, read_onnx
    from mixquant_core.files import atomic_write

    with progress(mode_of(args), "ONNX export") as cb:
        data = build_onnx(loaded.model, plan, layers, loaded.preprocess, cb, args.int8_weights).SerializeToString()
    f = read_onnx(data, loaded.model)  # what we hand out must read back and run
    f.session()
    atomic_write(args.out, data)  # a failed write never leaves half a model under the real name
    report = onnx_size_report(data, loaded.model, plan, f.scheme)
    if args.json:
        print(json.dumps({"out": args.out, "format": "onnx", "scheme": f.scheme, **report}, indent=2))
    else:
        print(f"wrote {args.out}: {report['bytes']} bytes, size accounting {report['accounted_bytes']} bytes "
              f"({report['difference_pct']:+.2f} %; {report['container_padding_bytes']} bytes of it are codes of "
              f"{report['integer_kernel_layers']} layers with quantized inputs in the 8-bit container of the integer "
              f"kernels), {f.scheme} codes, {plan.size['avg_bits']:.2f} average bits")
    if report["saturable_layers"]:
        notice(f"{report['saturable_layers']} of {report['integer_kernel_layers']} integer layers hold int8 codes that can "
               "saturate on CPUs without VNNI (AVX2 only), where the file then computes other numbers than the plan; "
               "--int8-weights exact stores them exactly")


def _load_onnx(args) -> None:
    from mixquant_core.data.image_sets import open_image_folder
    from mixquant_core.data.load import load_tensors
    from mixquant_core.export.onnx import evaluate_onnx, isolated_session, read_onnx

    from mixquant_core.evaluation.store import EvalKey, mixquant_version, open_store, remembered
    from mixquant_core.files import file_digest

    f = read_onnx(args.file)  # every claim checked against the graph before anything is shown or run
    if args.model:
        f.expect_model(args.model)
    store = open_store(args.store, not args.no_store) if args.data else None
    out = {"file": args.file, **f.summary(), "engine": "onnxruntime"}
    with isolated_session(f) as session:  # ORT (a limited child) must accept it before any image is decoded
        if args.data:
            images = open_image_folder(args.data).subset(args.limit)
            mode = mode_of(args)
            with progress(mode, "decode", "images") as cb:
                data = load_tensors(images, f.preprocess, cb)
            # keyed by the file's content: another file (or an edited one) never reads these numbers
            key = EvalKey(f"{f.model_label} ({os.path.basename(args.file)})", "onnx-" + file_digest(args.file)[:16],
                          f.scheme, None, data.fingerprint, len(data), repr(f.preprocess), "onnxruntime-cpu-file",
                          mixquant_version())
            with progress(mode, "evaluate", "images") as cb:
                m, stored = remembered(store, key, lambda: evaluate_onnx(f, data, progress=cb, session=session), notice)
            out.update(m.summary(), from_store=int(stored))
    _print_load(args, out, f"{args.file}: ONNX, {out['layers']} quantized layers ({out['scheme']}) of {f.model_label}, "
                           "run by ONNX Runtime")


def _print_load(args, out: dict, line: str) -> None:
    """``mixquant load``'s answer: the JSON, or ``line`` with the metrics when images were evaluated."""
    if args.json:
        print(json.dumps(out, indent=2))
        return
    if args.data:  # the numbers with their 95 % intervals, as `mixquant evaluate` prints them
        line += f"; {accuracy_text(out)}  ({out['images']} images)"
    print(line)


def cmd_load(args) -> None:
    if args.file.lower().endswith(".onnx"):
        return _load_onnx(args)
    from mixquant_core.data.image_sets import open_image_folder
    from mixquant_core.data.load import load_tensors
    from mixquant_core.evaluation.evaluator import Evaluator, Tally
    from mixquant_core.evaluation.store import open_store
    from mixquant_core.export.packed import load_quantized_, peek_plan, registry_model_of
    from mixquant_core.files import file_digest
    from mixquant_core.models.devices import resolve_device
    from mixquant_core.models.registry import LoadedModel, build_model, load_model

    plan = peek_plan(args.file)  # checksum verified before anything in the file is used
    store = open_store(args.store, not args.no_store) if args.data else None  # a bad store fails first
    if args.model:
        loaded = load_model(args.model, arch=args.arch, trust_code=args.trust_code)
    else:  # only ever a registry name from the file, never a path it names
        loaded = build_model(registry_model_of(plan))
    qf = load_quantized_(loaded.model, args.file)
    out = {"file": args.file, "model": loaded.name, "layers": len(qf.layers), "scheme": qf.scheme,
           "avg_bits": qf.plan.size.get("avg_bits")}
    if args.data:
        images = open_image_folder(args.data).subset(args.limit)
        mode = mode_of(args)
        with progress(mode, "decode", "images") as cb:
            data = load_tensors(images, loaded.preprocess, cb)
        # The file's own model: the store keys its results by the file's content, so a reconstructed
        # and a round-to-nearest file of the same plan never share a row.
        exported = LoadedModel(loaded.model, f"{loaded.name} ({os.path.basename(args.file)})", loaded.source,
                               loaded.preprocess, "export-" + file_digest(args.file)[:16])
        evaluator, tally = Evaluator(exported, resolve_device(args.device), args.engine, notify=notice), Tally()
        with progress(mode, "evaluate", "images") as cb:
            m = evaluator.evaluate(None, qf.scheme, data, store, progress=cb, tally=tally)
        out.update(m.summary(), from_store=tally.from_store)
    _print_load(args, out, f"{args.file}: {out['layers']} quantized layers ({out['scheme']}) load into {loaded.name}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run `mixquant reconstruct|export|load`")
