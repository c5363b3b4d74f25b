"""``mixquant bench``: latency of an ONNX export (or of a plan, exported first) against its float32
model, on ONNX Runtime's and OpenVINO's CPU backends: ms per image at batch 1, images/s at batch 32."""
from __future__ import annotations

import json

from .choices import INT8_WEIGHTS, LATENCY_PRECISIONS, LATENCY_RUNTIMES
from .options import add_json_arg, add_progress_args, add_trust_code, name_list, number
from .output import fmt, notice, print_table
from .progress import mode_of, progress


def _runtimes(args) -> list:
    from mixquant_core.errors import MixQuantError

    unknown = [r for r in args.runtime if r not in LATENCY_RUNTIMES]
    if unknown or not args.runtime:
        raise MixQuantError(f"--runtime takes {' and/or '.join(LATENCY_RUNTIMES)} (comma-separated), got "
                            f"{','.join(unknown) or 'nothing'}")
    return list(dict.fromkeys(args.runtime))


def cmd_bench(args) -> None:
    from mixquant_core.errors import MixQuantError

    if (args.file is None) == (args.plan is None):
        raise MixQuantError("bench takes an ONNX file or --plan plan.json (one of the two)")
    from mixquant_core.models.registry import build_model, load_model
    from mixquant_core.studies.latency import bench_file, bench_plan

    options = dict(runtimes=_runtimes(args), precision=args.precision, runs=args.runs, batch=args.batch)
    plan = None
    if args.plan:
        from mixquant_core.plans.plan import Plan

        plan = Plan.load(args.plan)  # a bad plan fails before the model is loaded
    loaded = None
    if args.model:
        loaded = load_model(args.model, arch=args.arch, trust_code=args.trust_code)
    elif plan is not None:  # only ever a registry name from the plan, never a path it names
        loaded = build_model(plan.model.get("name", ""))
    with progress(mode_of(args), "bench", "measurements") as cb:
        if plan is not None:
            from .inputs import plan_notice

            plan_notice(plan, loaded.model)
            result = bench_plan(loaded, plan, progress=cb, int8_weights=args.int8_weights, **options)
        else:
            result = bench_file(args.file, loaded.model if loaded else None, progress=cb, **options)
    print_bench(result, args.json)


def print_bench(result, as_json: bool) -> None:
    for line in result.notices:
        notice(line)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    batch = next((r.batch for r in result.latencies if r.batch), None)
    headers = ["runtime", "model", "precision", "batch 1 ms/image [25-75 %]", f"batch {batch} images/s",
               "vs float32 (batch 1)", f"vs float32 (batch {batch})"]
    body = []
    for r in result.latencies:
        ratios = result.ratios(r)
        body.append([r.runtime, r.model, r.precision, f"{r.ms_per_image:.2f} [{r.spread[0]:.2f}, {r.spread[1]:.2f}]",
                     fmt(r.images_per_second, 1)] + [f"{v:.2f}x" if v is not None else "N/A"
                                                       for v in (ratios["speedup_batch1"], ratios["speedup_batch"])])
    print_table(headers, body)
    first = result.latencies[0] if result.latencies else None
    if first is not None:
        print(f"\n{result.shown} ({result.model}); {first.runs} timed images at batch 1 after warm-up, "
              f"{max(2, first.runs // 10)} batches of {batch}, {first.threads} threads, CPU; "
              "vs float32: speed against the float32 model on the same runtime (> 1: faster)")


def add_latency_arg(p) -> None:
    """``--latency`` on the commands that tabulate plans (sweep, sweep --compare, report)."""
    p.add_argument("--latency", action="store_true",
                   help="also measure each plan's latency: its ONNX export on ONNX Runtime (CPU), median ms per image "
                        "at batch 1 (float32: the float graph); a few seconds per plan")


def with_latency(args, ws, rows, mode: str) -> list:
    """``rows`` with their latency measured when ``--latency`` was given (else unchanged)."""
    if not getattr(args, "latency", False):
        return rows
    from mixquant_core.studies.latency import with_latency as measured

    from .progress import progress

    with progress(mode, "latency", "plans") as cb:
        return measured(ws, rows, progress=cb, notify=notice)


def latency_columns(rows) -> tuple:
    """(headers, cells per row): a "latency ms" column when any row was measured, else nothing."""
    if all(r.latency_ms is None for r in rows):
        return [], [[] for _ in rows]
    return ["latency ms"], [[fmt(r.latency_ms)] for r in rows]


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="latency of an ONNX export (or a plan) against float32: ONNX Runtime "
                                            "and OpenVINO on the CPU")
    p.add_argument("file", nargs="?", help="an .onnx file from `mixquant export --format onnx` (checked as `load` "
                                          "checks it, timed in a limited child process)")
    p.add_argument("--plan", help="instead of a file: a plan JSON, exported to ONNX first")
    p.add_argument("--int8-weights", choices=INT8_WEIGHTS, default=INT8_WEIGHTS[0],
                   help="with --plan: as `mixquant export --int8-weights` (default exact)")
    p.add_argument("--model", help="the float32 reference's model (default: the registry model the file or plan names)")
    p.add_argument("--arch", help="architecture (registry name) of a state-dict --model file")
    add_trust_code(p)
    p.add_argument("--runtime", type=name_list, default=list(LATENCY_RUNTIMES),
                   help="comma-separated: " + ",".join(LATENCY_RUNTIMES) + " (default both)")
    p.add_argument("--precision", choices=LATENCY_PRECISIONS, default=LATENCY_PRECISIONS[0],
                   help="OpenVINO's INFERENCE_PRECISION_HINT (default f32; bf16 where the CPU has it, else it runs f32)")
    p.add_argument("--runs", type=number("runs"), default=30, help="timed single images (default 30; batches: a tenth, "
                                                                    "at least 2)")
    p.add_argument("--batch", type=number("batch_size"), default=32, help="the throughput batch (default 32)")
    add_json_arg(p)
    add_progress_args(p)
    p.set_defaults(run=cmd_bench)
