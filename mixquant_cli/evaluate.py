"""``mixquant evaluate``: top-1/top-5/loss, with their 95 % intervals, of float32, int8 or a plan."""
from __future__ import annotations

import json

from .inputs import eval_tensors, open_evaluations, plan_notice, use_default_data
from .options import add_data_args, add_model_args
from .output import accuracy_text
from .progress import mode_of, progress


def cmd_evaluate(args) -> None:
    from mixquant_core.plans.plan import Plan

    plan = Plan.load(args.plan) if args.plan else None  # a bad plan fails before any slow work
    use_default_data(args)
    ev = open_evaluations(args)
    ws = ev.ws
    if plan:
        plan_notice(plan, ws.loaded.model)
    mode = mode_of(args)
    data = eval_tensors(args, ws, mode)
    with progress(mode, "evaluate", "images") as cb:
        ref = ev.evaluate_bits(None, data, cb) if (plan or args.int8) else None  # the paired comparison's other side
        if plan:
            m = ev.evaluate_plan(plan, data, cb)
        else:
            m = ev.evaluate_bits(ws.uniform(8) if args.int8 else None, data, cb)
    out = m.summary(ref)
    if args.json:
        print(json.dumps({**out, "from_store": ev.tally.from_store}))
        return
    from mixquant_core.evaluation.statistics import describe_difference

    what = "plan " + args.plan if args.plan else "int8" if args.int8 else "float32"
    print(f"{ws.loaded.name} {what}: {accuracy_text(out)}  ({m.images} images"
          f"{', stopped early' if m.stopped_early else ''}"
          f"{', from the results store' if ev.tally.from_store and not ev.tally.evaluated else ''})")
    if ref is not None:
        print("vs float32: " + describe_difference(m.versus(ref)))


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="top-1/top-5/loss of float32, int8 or a plan")
    add_model_args(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--plan", help="plan JSON to apply")
    g.add_argument("--int8", action="store_true", help="all layers at 8 bits")
    add_data_args(p)
    p.set_defaults(run=cmd_evaluate)
