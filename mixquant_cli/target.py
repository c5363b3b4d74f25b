"""CLI of the accuracy target: ``mixquant search --max-drop D --data DIR`` (wraps the plain search)."""
from __future__ import annotations

import json
import sys

from mixquant_core.errors import MixQuantError


def cmd_target(args) -> None:
    from .compare import workspace_with_table
    from .main import _eval_tensors, progress_bar
    from mixquant_core.studies.target import smallest_within_drop, target_plan

    if not args.data:
        raise MixQuantError("--max-drop measures accuracy: give the evaluation images with --data DIR")
    ws, calib, show = workspace_with_table(args, args.method == "fisher")
    data = _eval_tensors(args, ws, show)
    with progress_bar(show, "float32") as cb:
        ws.evaluate_bits(None, data, cb)
    with progress_bar(show, "bisection") as cb:
        result = smallest_within_drop(ws, data, args.max_drop, args.method, args.confident, calib, cb)
    plan = target_plan(ws, result) if result.found else None
    if plan is not None and args.out:
        plan.save(args.out)
    if args.json:
        print(json.dumps({**result.to_dict(), "out": args.out, "from_store": ws.from_store,
                          **({"plan_file": json.loads(plan.to_json())} if plan is not None and not args.out else {})},
                         indent=2))
        return
    how = f"{result.evaluated} of {result.candidates} distinct {args.method} plans evaluated by bisection"
    if plan is None:
        raise MixQuantError(result.certainty())
    s = plan.size
    head = (f"smallest {args.method} plan within {args.max_drop:g} points of float32"
            f"{' (95 % upper bound)' if args.confident else ''}: top-1 {result.metrics.top1:.2f} % vs "
            f"{result.reference.top1:.2f} %, {s['avg_bits']:.2f} average bits, {s['plan_mb']:.2f} MB of "
            f"{s['float32_mb']:.2f} MB ({s['compression']:.2f}x); {how}")
    if args.out:
        print(f"wrote {args.out}: {head}\n{result.certainty()}")
    else:
        print(plan.to_json())
        print(f"{head}\n{result.certainty()}", file=sys.stderr)


def register(subparsers, commands) -> None:
    """``search --max-drop``: data, family and confidence options on the existing search command."""
    from .compare import _add_calib_args
    from .main import _add_data_args
    from mixquant_core.studies.target import FAMILIES

    search = subparsers.choices["search"]
    _add_data_args(search, required=False)
    search.add_argument("--method", choices=tuple(FAMILIES), default="qem",
                        help="--max-drop: which family of plans to search (" +
                             "; ".join(f"{k}: {v}" for k, v in FAMILIES.items()) + ")")
    search.add_argument("--confident", action="store_true",
                        help="--max-drop: the upper end of the drop's 95 %% interval must be within the target")
    _add_calib_args(search)
    plain_search = commands["search"]
    commands["search"] = lambda args: cmd_target(args) if args.max_drop is not None else plain_search(args)
