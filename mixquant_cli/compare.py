"""``mixquant sweep --compare``: uniform vs MixQuant-QEM vs budgeted plans at matched average-bit
budgets, the Pareto front marked."""
from __future__ import annotations

import json
import sys
import time

from mixquant_core.errors import MixQuantError

from .bench import latency_columns, with_latency
from .choices import COMPARE_METHODS, COMPARE_TARGETS
from .inputs import calib_dir, eval_tensors, fisher_calibration, open_evaluations, use_default_data
from .options import name_list, number_list
from .output import (VERSUS_HEADERS, VERSUS_NOTE, check_out, fmt, print_table, versus_cells, with_ci,
                     write_csv)
from .progress import mode_of, progress


def cmd_compare(args) -> None:
    from mixquant_core.studies.compare import compare

    t0 = time.perf_counter()
    use_default_data(args)
    check_out(args, args.data, args.calib)
    ev = open_evaluations(args)
    ws = ev.ws
    mode = mode_of(args)
    with progress(mode, "QE table", "layers") as cb:
        ws.table(cb)
    methods = args.methods
    calib = None
    if "budget-fisher" in methods:
        if calib_dir(args) is None:
            print("warning: no calibration folder (--calib or MIXQUANT_DATA): skipping budget-fisher", file=sys.stderr)
            methods = [m for m in methods if m != "budget-fisher"]
            if not methods:
                raise MixQuantError("budget-fisher needs calibration images: pass --calib DIR (or set MIXQUANT_DATA)")
        else:
            calib = fisher_calibration(args, ws, mode)
    data = eval_tensors(args, ws, mode)
    with progress(mode, "compare") as cb:
        rows = compare(ev, data, args.targets, methods, calib, progress=cb)
    rows = with_latency(args, ws, rows, mode)
    elapsed = time.perf_counter() - t0
    write_csv(args.out, rows)
    info = {"model": ws.loaded.name, "quantizer": ws.quantizer, "images": len(data),
            "calibration_images": len(calib) if calib is not None else 0,
            "distinct_plans": ev.tally.distinct, "evaluated": ev.tally.evaluated, "from_store": ev.tally.from_store,
            "seconds": elapsed}
    if args.json:
        print(json.dumps({**info, "rows": [r.to_dict(with_bits=True) for r in rows]}, indent=2))
        return
    print_rows(rows)
    print_matched(rows, methods)
    print(f"\n{ws.loaded.name}, {ws.quantizer}, {len(data)} images, calibration {info['calibration_images']} images, "
          f"{ev.tally.distinct} distinct plans (float32 included): {ev.tally.evaluated} evaluated, "
          f"{ev.tally.from_store} from the results store, {elapsed:.1f} s on {ws.evaluator.where()}")


def print_rows(rows) -> None:
    """Every compared plan, one row each, with the paired comparison to float32."""
    headers = ["method", "budget", "QEM", "bit-widths", "top-1 [95 %]", "top-5 [95 %]", "loss", "avg bits", "size MB", "x",
               "Pareto"]
    latency_headers, latency_cells = latency_columns(rows)
    body = [[r.method, fmt(r.target) if r.target is not None else "N/A", fmt(r.qem, 3) if r.qem else "N/A",
             r.bit_set, with_ci(r.top1, r.top1_ci), with_ci(r.top5, r.top5_ci), fmt(r.loss, 3), fmt(r.avg_bits),
             fmt(r.size_mb, 3), fmt(r.compression), "*" if r.pareto else ""] + cells + versus_cells(r.to_dict())
            for r, cells in zip(rows, latency_cells)]
    print_table(headers + latency_headers + VERSUS_HEADERS, body)
    print(VERSUS_NOTE)


def print_matched(rows, methods) -> None:
    """One line per average-bit budget, a cell per method: its top-1 [95 %] @ bits / MB."""
    from mixquant_core.studies.compare import matched

    print("\nAt matched budgets (top-1 % [95 %], average bits, MB; * = on the Pareto front):")
    shown = [m for m in COMPARE_METHODS if m in methods]
    lines = []
    for line in matched(rows):
        cells = [fmt(line["target"])]
        for m in shown:
            r = line.get(m)
            cells.append("" if r is None else
                         f"{with_ci(r.top1, r.top1_ci)} @ {r.avg_bits:.2f} b / {r.size_mb:.3f} MB{' *' if r.pareto else ''}")
        lines.append(cells)
    print_table(["avg-bit budget"] + shown, lines)


def add_compare_args(sweep) -> None:
    """``sweep --compare`` and its options, on the sweep command."""
    sweep.add_argument("--compare", action="store_true",
                       help="instead of a QEM sweep: uniform vs MixQuant-QEM vs budgeted plans, Pareto front marked")
    sweep.add_argument("--targets", type=number_list("target_bits"), default=list(COMPARE_TARGETS),
                       help="--compare: average-bit budgets (default " + ",".join(f"{t:g}" for t in COMPARE_TARGETS) + ")")
    sweep.add_argument("--methods", type=name_list, default=list(COMPARE_METHODS),
                       help="--compare: which of " + ",".join(COMPARE_METHODS))
