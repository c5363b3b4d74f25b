"""``mixquant search``: the plan for a QEM or a size budget; with ``--max-drop``, the smallest plan
within an accuracy target (target.py)."""
from __future__ import annotations

import json

from . import target
from .inputs import open_evaluations
from .options import add_model_args, number
from .output import check_out
from .progress import mode_of, progress


def cmd_search(args) -> None:
    check_out(args)
    ws = open_evaluations(args).ws
    with progress(mode_of(args), "QE table", "layers") as cb:
        ws.table(cb)
    qem = args.qem if args.qem is not None else ws.qem_for_budget(args.max_mb, args.max_avg_bits)
    plan = ws.plan(qem)
    text = plan.to_json()
    if args.out:
        plan.save(args.out)
        s = plan.size
        msg = (f"wrote {args.out}: QEM {qem:g}, {s['avg_bits']:.2f} average bits, "
               f"{s['plan_mb']:.2f} MB of {s['float32_mb']:.2f} MB ({s['compression']:.2f}x)")
        print(json.dumps({"out": args.out, "qem": qem, "size": s}) if args.json else msg)
    else:
        print(text)


def run(args) -> None:
    """An accuracy target (``--max-drop``) measures plans; the other budgets need only the QE table."""
    if args.max_drop is not None:
        target.cmd_target(args)
    else:
        cmd_search(args)


def register(subparsers) -> None:
    p = subparsers.add_parser("search", help="choose bit-widths for a QEM (or a size budget) and write the plan")
    add_model_args(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--qem", type=number("qem"), help="quantization error multiplier, >= 1")
    g.add_argument("--max-mb", type=number("max_mb"), help="largest model size allowed, in MB")
    g.add_argument("--max-avg-bits", type=number("avg_bits"), help="largest average bit-width allowed")
    g.add_argument("--max-drop", type=number("max_drop"), help="largest top-1 drop from float32 allowed, in points "
                                                  "(evaluates on --data)")
    p.add_argument("--out", help="write the plan JSON here (default: stdout)")
    target.add_target_args(p)
    p.set_defaults(run=run)
