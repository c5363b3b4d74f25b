"""CLI of budgeted allocation: ``mixquant allocate`` and ``mixquant sweep --compare``."""
from __future__ import annotations

import json
import sys
import time
from typing import Optional

from mixquant_core.errors import MixQuantError


def _add_calib_args(p) -> None:
    p.add_argument("--calib", help="calibration images for the Fisher cost (labelled folder, or plain images: "
                                   "the model's predictions stand in); default $MIXQUANT_DATA/imagenet-calib-1000")
    p.add_argument("--calib-images", type=int, default=64, help="calibration images, spread over the folder (default 64)")


def _calib_dir(args) -> Optional[str]:
    from mixquant_core.data.image_sets import default_calib_dir

    return args.calib or default_calib_dir()


def _calib_tensors(args, ws, show: bool):
    from .main import calibration_tensors

    where = _calib_dir(args)
    if where is None:
        raise MixQuantError("the Fisher cost needs calibration images: pass --calib DIR (or set MIXQUANT_DATA)")
    return calibration_tensors(where, args.calib_images, ws.loaded.preprocess, show)


def workspace_with_table(args, fisher: bool) -> tuple:
    """(Workspace with its QE table, calibration set or None, show progress): the Fisher table too
    when ``fisher``; each step with a progress bar."""
    from .main import _workspace, check_out, progress_bar

    check_out(args, getattr(args, "calib", None))
    ws = _workspace(args)
    show = not args.no_progress
    with progress_bar(show, "QE table") as cb:
        ws.table(cb)
    calib = None
    if fisher:
        calib = _calib_tensors(args, ws, show)
        with progress_bar(show, "Fisher") as cb:
            ws.fisher(calib, cb)
    return ws, calib, show


def cmd_allocate(args) -> None:
    ws, calib, _ = workspace_with_table(args, args.cost == "fisher")
    bits = ws.budget_bits(args.cost, max_mb=args.max_mb, avg_bits=args.avg_bits, calib=calib)
    budget = {"max_mb": args.max_mb} if args.max_mb is not None else {"avg_bits": args.avg_bits}
    within = f"{args.max_mb:g} MB" if args.max_mb is not None else f"{args.avg_bits:g} average bits"
    plan = ws.plan_from_bits(bits, None, extra={"method": f"budget-{args.cost}", "budget": budget})
    if not args.out:
        print(plan.to_json())
        return
    plan.save(args.out)
    s = plan.size
    if args.json:
        print(json.dumps({"out": args.out, "cost": args.cost, "budget": budget, "size": s}))
    else:
        print(f"wrote {args.out}: least summed {args.cost} cost within {within}: {s['avg_bits']:.2f} average bits, "
              f"{s['plan_mb']:.2f} MB of {s['float32_mb']:.2f} MB ({s['compression']:.2f}x)")


def cmd_compare(args) -> None:
    from .main import VERSUS_HEADERS, VERSUS_NOTE, _eval_tensors, _fmt, _print_table, _versus, _with_ci, _workspace, \
        check_out, progress_bar, ran_on, write_csv
    from mixquant_core.studies.compare import compare, matched

    t0 = time.perf_counter()
    check_out(args, args.data, args.calib)
    ws = _workspace(args)
    show = not args.no_progress
    with progress_bar(show, "QE table") as cb:
        ws.table(cb)
    methods = args.methods
    calib = None
    if "budget-fisher" in methods:
        if _calib_dir(args) is None:
            print("warning: no calibration folder (--calib or MIXQUANT_DATA): skipping budget-fisher", file=sys.stderr)
            methods = [m for m in methods if m != "budget-fisher"]
            if not methods:
                raise MixQuantError("budget-fisher needs calibration images: pass --calib DIR (or set MIXQUANT_DATA)")
        else:
            calib = _calib_tensors(args, ws, show)
    data = _eval_tensors(args, ws, show)
    with progress_bar(show, "compare") as cb:
        rows = compare(ws, data, args.targets, methods, calib, progress=cb)
    elapsed = time.perf_counter() - t0
    write_csv(args.out, rows)
    info = {"model": ws.loaded.name, "quantizer": ws.quantizer, "images": len(data),
            "calibration_images": len(calib) if calib is not None else 0,
            "distinct_plans": ws.distinct_evaluated, "evaluated": ws.evaluated_now, "from_store": ws.from_store,
            "seconds": elapsed}
    if args.json:
        print(json.dumps({**info, "rows": [r.to_dict(with_bits=True) for r in rows]}, indent=2))
        return
    headers = ["method", "budget", "QEM", "bit-widths", "top-1 [95 %]", "top-5 [95 %]", "loss", "avg bits", "size MB", "x",
               "Pareto"]
    body = [[r.method, _fmt(r.target) if r.target is not None else "N/A", _fmt(r.qem, 3) if r.qem else "N/A",
             r.bit_set, _with_ci(r.top1, r.top1_ci), _with_ci(r.top5, r.top5_ci), _fmt(r.loss, 3), _fmt(r.avg_bits),
             _fmt(r.size_mb, 3), _fmt(r.compression), "*" if r.pareto else ""] + _versus(r.to_dict()) for r in rows]
    _print_table(headers + VERSUS_HEADERS, body)
    print(VERSUS_NOTE)
    print("\nAt matched budgets (top-1 %, average bits, MB; * = on the Pareto front):")
    shown = [m for m in ("uniform", "mixquant", "budget-qe", "budget-fisher") if m in methods]
    lines = []
    for line in matched(rows):
        cells = [_fmt(line["target"])]
        for m in shown:
            r = line.get(m)
            cells.append("" if r is None else f"{r.top1:.2f} @ {r.avg_bits:.2f} b / {r.size_mb:.3f} MB{' *' if r.pareto else ''}")
        lines.append(cells)
    _print_table(["avg-bit budget"] + shown, lines)
    print(f"\n{ws.loaded.name}, {ws.quantizer}, {len(data)} images, calibration {info['calibration_images']} images, "
          f"{ws.distinct_evaluated} distinct plans (float32 included): {ws.evaluated_now} evaluated, {ws.from_store} from "
          f"the results store, {elapsed:.1f} s on {ran_on(ws)}")


def register(subparsers, commands) -> None:
    """``allocate`` sub-command; ``sweep --compare`` (wraps the plain sweep)."""
    from .main import _add_model_args, _float_list
    from mixquant_core.studies.compare import DEFAULT_TARGETS, METHODS

    p = subparsers.add_parser("allocate", help="least-cost bit-widths within a size budget (Lagrangian hull sweep)")
    _add_model_args(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--avg-bits", type=float, help="largest average bit-width allowed")
    g.add_argument("--max-mb", type=float, help="largest model size allowed, in MB")
    p.add_argument("--cost", choices=("qe", "fisher"), default="qe",
                   help="summed cost to minimise: plain QE, or Fisher-weighted error (needs calibration images)")
    _add_calib_args(p)
    p.add_argument("--out", help="write the plan JSON here (default: stdout)")
    commands["allocate"] = cmd_allocate

    sweep = subparsers.choices["sweep"]
    sweep.add_argument("--compare", action="store_true",
                       help="instead of a QEM sweep: uniform vs MixQuant-QEM vs budgeted plans, Pareto front marked")
    sweep.add_argument("--targets", type=_float_list, default=list(DEFAULT_TARGETS),
                       help="--compare: average-bit budgets (default " + ",".join(f"{t:g}" for t in DEFAULT_TARGETS) + ")")
    sweep.add_argument("--methods", type=lambda s: [m for m in s.split(",") if m], default=list(METHODS),
                       help="--compare: which of " + ",".join(METHODS))
    _add_calib_args(sweep)
    plain_sweep = commands["sweep"]
    commands["sweep"] = lambda args: cmd_compare(args) if args.compare else plain_sweep(args)
