"""``mixquant allocate``: least-cost bit-widths within a size budget (Lagrangian hull sweep)."""
from __future__ import annotations

import json

from .choices import ALLOCATION_COSTS
from .inputs import workspace_with_table
from .options import add_model_args, number
from .progress import mode_of, progress


def cmd_allocate(args) -> None:
    mode = mode_of(args)
    ev, calib = workspace_with_table(args, args.cost != "qe", mode)
    ws = ev.ws
    if args.cost == "fisher-gptq":
        with progress(mode, "GPTQ cost", "layers") as cb:
            ws.gptq_costs(calib, cb)
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


def register(subparsers) -> None:
    p = subparsers.add_parser("allocate", help="least-cost bit-widths within a size budget (Lagrangian hull sweep)")
    add_model_args(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--avg-bits", type=number("avg_bits"), help="largest average bit-width allowed")
    g.add_argument("--max-mb", type=number("max_mb"), help="largest model size allowed, in MB")
    p.add_argument("--cost", choices=ALLOCATION_COSTS, default="qe",
                   help="summed cost to minimise: plain QE, Fisher-weighted error of round-to-nearest, or "
                        "fisher-gptq: Fisher-weighted error of GPTQ's weights, for plans that `reconstruct --method "
                        "gptq` will round (both need calibration images)")
    p.add_argument("--out", help="write the plan JSON here (default: stdout)")
    p.set_defaults(run=cmd_allocate)
