"""``mixquant qe``: the QE table (layers x bit-widths)."""
from __future__ import annotations

import json

from .inputs import open_evaluations
from .options import add_model_args
from .output import print_table
from .progress import mode_of, progress


def cmd_qe(args) -> None:
    ws = open_evaluations(args).ws
    with progress(mode_of(args), "QE table", "layers") as cb:
        table = ws.table(cb)
    if args.json:
        out = {"model": ws.loaded.name, **table.to_dict()}
        print(json.dumps(out, indent=2))
        return
    headers = ["layer", "kind", "params"] + [f"QE@{b}" for b in table.bits]
    rows = [[l.name, l.kind, str(l.params)] + [f"{table.qe[i, j]:.3e}" for j in range(len(table.bits))]
            for i, l in enumerate(table.layers)]
    print_table(headers, rows)


def register(subparsers) -> None:
    p = subparsers.add_parser("qe", help="print the QE table (layers x bit-widths)")
    add_model_args(p)
    p.set_defaults(run=cmd_qe)
