"""``mixquant qe``: the QE table (layers x bit-widths), and what stays float32."""
from __future__ import annotations

import json

from .inputs import open_evaluations
from .options import add_model_args
from .output import print_table
from .progress import mode_of, progress


def float32_section(ws) -> dict:
    """``qe --json``'s ``float32``: the parameters no layer covers, grouped by why."""
    from mixquant_core.models.layers import float32_rest

    groups = float32_rest(ws.loaded.model, ws.layers)
    return {"params": sum(g.params for g in groups), "groups": [g.to_dict() for g in groups]}


def print_float32(section: dict) -> None:
    print(f"\nstays float32: {section['params']:,} parameters")
    for g in section["groups"]:
        print(f"  {g['reason']}: {g['params']:,} in {g['tensors']} tensor(s)")


def cmd_qe(args) -> None:
    ws = open_evaluations(args).ws
    with progress(mode_of(args), "QE table", "layers") as cb:
        table = ws.table(cb)
    section = float32_section(ws)
    if args.json:
        out = {"model": ws.loaded.name, **table.to_dict(), "float32": section}
        print(json.dumps(out, indent=2))
        return
    headers = ["layer", "kind", "params"] + [f"QE@{b}" for b in table.bits]
    rows = [[l.name, l.kind, str(l.params)] + [f"{table.qe[i, j]:.3e}" for j in range(len(table.bits))]
            for i, l in enumerate(table.layers)]
    print_table(headers, rows)
    print_float32(section)


def register(subparsers) -> None:
    p = subparsers.add_parser("qe", help="print the QE table (layers x bit-widths) and what stays float32")
    add_model_args(p)
    p.set_defaults(run=cmd_qe)
