"""``mixquant report``: one self-contained HTML report (figures embedded, opens offline)."""
from __future__ import annotations

import json

from .bench import add_latency_arg, with_latency
from .inputs import eval_tensors, open_evaluations, use_default_data
from .options import add_data_args, add_model_args, number
from .output import check_out
from .progress import mode_of, progress, sweep_unit


def cmd_report(args) -> None:
    from mixquant_core.files import atomic_write
    from mixquant_core.plans.search import default_qem_grid
    from mixquant_core.studies.target import smallest_within_drop
    from mixquant_viz.report import report_html

    use_default_data(args)
    check_out(args, args.data)  # before any work: a folder, unwritable, or an input
    ev = open_evaluations(args)
    ws = ev.ws
    mode = mode_of(args)
    with progress(mode, "QE table", "layers") as cb:
        table = ws.table(cb)
    data = eval_tensors(args, ws, mode)
    with progress(mode, "sweep", sweep_unit(ws.evaluator.cluster)) as cb:
        rows = ev.sweep(data, default_qem_grid(table, args.steps), cb)
    rows = with_latency(args, ws, rows, mode)
    with progress(mode, "bisection") as cb:
        target = smallest_within_drop(ev, data, args.max_drop, "qem", args.confident, progress=cb)
    text = report_html(ws, data, rows, target)
    atomic_write(args.out, text)
    info = {"out": args.out, "bytes": len(text.encode()), "images": len(data), "rows": len(rows),
            "evaluated": ev.tally.evaluated, "from_store": ev.tally.from_store, "chosen_found": target.found}
    print(json.dumps(info) if args.json else
          f"wrote {args.out} ({info['bytes'] / 1e6:.1f} MB, opens offline): {len(rows)} sweep rows on {len(data)} images, "
          f"{ev.tally.evaluated} evaluated, {ev.tally.from_store} from the results store")


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="one self-contained HTML report (figures embedded, works offline)")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--steps", type=number("steps"), default=12, help="QEM points of the sweep (default 12, as in the app)")
    p.add_argument("--max-drop", type=number("max_drop"), default=1.0, help="the chosen plan: smallest within this top-1 drop (default 1)")
    p.add_argument("--confident", action="store_true", help="the chosen plan's 95 %% upper bound of the drop must be within it")
    p.add_argument("--out", required=True, help="the HTML file to write")
    add_latency_arg(p)
    p.set_defaults(run=cmd_report)
