"""``mixquant search --max-drop D``: the smallest plan whose top-1 stays within D points of float32."""
from __future__ import annotations

import json
import sys

from mixquant_core.errors import MixQuantError

from .choices import TARGET_FAMILIES
from .inputs import eval_tensors, use_default_data, workspace_with_table
from .options import add_data_args
from .output import with_ci
from .progress import mode_of, progress

NO_DATA = "--max-drop measures accuracy: give the evaluation images with --data DIR (or set MIXQUANT_DATA)"


def cmd_target(args) -> None:
    from mixquant_core.studies.target import smallest_within_drop, target_plan

    use_default_data(args, NO_DATA)
    mode = mode_of(args)
    ev, calib = workspace_with_table(args, args.method == "fisher", mode)
    ws = ev.ws
    data = eval_tensors(args, ws, mode)
    with progress(mode, "float32", "images") as cb:
        ev.evaluate_bits(None, data, cb)
    with progress(mode, "bisection") as cb:
        result = smallest_within_drop(ev, data, args.max_drop, args.method, args.confident, calib, cb)
    plan = target_plan(ws, result) if result.found else None
    if plan is not None and args.out:
        plan.save(args.out)
    if args.json:
        print(json.dumps({**result.to_dict(), "out": args.out, "from_store": ev.tally.from_store,
                          **({"plan_file": json.loads(plan.to_json())} if plan is not None and not args.out else {})},
                         indent=2))
        return
    how = f"{result.evaluated} of {result.candidates} distinct {args.method} plans evaluated by bisection"
    if plan is None:
        raise MixQuantError(result.certainty())
    s = plan.size
    head = (f"smallest {args.method} plan within {args.max_drop:g} points of float32"
            f"{' (95 % upper bound)' if args.confident else ''}: top-1 {top1_with_ci(result.metrics)} % vs "
            f"{top1_with_ci(result.reference)} %, {s['avg_bits']:.2f} average bits, {s['plan_mb']:.2f} MB of "
            f"{s['float32_mb']:.2f} MB ({s['compression']:.2f}x); {how}")
    if args.out:
        print(f"wrote {args.out}: {head}\n{result.certainty()}")
    else:
        print(plan.to_json())
        print(f"{head}\n{result.certainty()}", file=sys.stderr)


def top1_with_ci(metrics) -> str:
    return with_ci(metrics.top1, metrics.intervals()["top1_ci"])


def add_target_args(search) -> None:
    """``search --max-drop``'s data, plan family and confidence options."""
    add_data_args(search)
    search.add_argument("--method", choices=tuple(TARGET_FAMILIES), default="qem",
                        help="--max-drop: which family of plans to search (" +
                             "; ".join(f"{k}: {v}" for k, v in TARGET_FAMILIES.items()) + ")")
    search.add_argument("--confident", action="store_true",
                        help="--max-drop: the upper end of the drop's 95 %% interval must be within the target")
