"""CLI of the results store: ``mixquant results list|show|export --csv|prune``."""
from __future__ import annotations

import datetime
import json

from mixquant_core.errors import MixQuantError

from .options import add_json_arg, number
from .output import fmt, notice, print_table


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def cmd_results(args) -> None:
    from mixquant_core.evaluation.store import ResultsStore, default_store_path

    store = ResultsStore(args.store or default_store_path())
    if args.action == "list":
        rows = store.rows(args.model, on_damaged=notice)  # a damaged row: one note, skipped
        if args.json:
            print(json.dumps(rows, indent=2))
            return
        body = [[str(r["id"]), r["model_name"], r["quantizer"], r["bits_hash"], f"{r['evaluated']}/{r['images']}",
                 f"{r['top1']:.2f} [{r['top1_lo']:.1f}, {r['top1_hi']:.1f}]", fmt(r["top5"]),
                 "stopped early" if r["stopped_early"] else "", r["engine"], _when(r["created"]), f"{r['seconds']:.1f}"]
                for r in rows]
        print_table(["id", "model", "quantizer", "bits hash", "images", "top-1 [95 %]", "top-5", "", "engine", "when", "s"], body)
        print(f"\n{len(rows)} evaluation(s) in {store.path}")
    elif args.action == "show":
        if args.id is None:
            raise MixQuantError("results show needs the row id (see mixquant results list)")
        row = store.row(args.id)
        if args.json:
            print(json.dumps(row, indent=2))
            return
        for k, v in row.items():
            if k != "bits":
                print(f"{k:18s} {_when(v) if k == 'created' else v}")
        if row["bits"]:
            print("bits               " + ", ".join(f"{name}={b}" for name, b in row["bits"].items()))
    elif args.action == "export":
        if args.csv:
            from mixquant_core.files import atomic_write, check_output

            check_output(args.csv, [store.path], what="--csv")
        text = store.to_csv(args.model)
        if args.csv:
            atomic_write(args.csv, text)
            print(f"wrote {args.csv}: {text.count(chr(10)) - 1} row(s)")
        else:
            print(text, end="")
    elif args.action == "prune":
        gone = store.clear() if args.all else store.prune(args.older_than, args.model, args.other_versions)
        print(json.dumps({"deleted": gone}) if args.json else f"deleted {gone} row(s) from {store.path}")


def register(subparsers) -> None:
    p = subparsers.add_parser("results", help="the results store: list | show ID | export [--csv FILE] | prune")
    p.add_argument("action", choices=("list", "show", "export", "prune"))
    p.add_argument("id", nargs="?", type=number("row_id"), help="show: the row id")
    p.add_argument("--store", metavar="PATH", help="default $MIXQUANT_HOME/results.sqlite")
    p.add_argument("--model", help="only this model's rows (list, export, prune)")
    p.add_argument("--csv", metavar="FILE", help="export: write CSV here (default: stdout)")
    p.add_argument("--older-than", type=number("days"), metavar="DAYS", help="prune: rows older than this")
    p.add_argument("--other-versions", action="store_true", help="prune: rows written by another mixquant version")
    p.add_argument("--all", action="store_true", help="prune: every row")
    add_json_arg(p)
    p.set_defaults(run=cmd_results)
