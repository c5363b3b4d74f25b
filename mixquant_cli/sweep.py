"""``mixquant sweep``: the Table-2 style sweep over QEMs, each distinct plan evaluated once; with
``--compare``, uniform vs MixQuant vs budgeted plans (compare.py)."""
from __future__ import annotations

import json
import time

from . import compare
from .bench import add_latency_arg, latency_columns, with_latency
from .inputs import eval_tensors, open_evaluations, use_default_data
from .options import add_data_args, add_model_args, number, number_list
from .output import VERSUS_HEADERS, VERSUS_NOTE, check_out, fmt, print_table, versus_cells, with_ci, write_csv
from .progress import mode_of, progress, sweep_unit



def cmd_sweep(args) -> None:
    from mixquant_core.plans.search import default_qem_grid

    t0 = time.perf_counter()
    use_default_data(args)
    check_out(args, args.data)
    ev = open_evaluations(args)
    ws = ev.ws
    mode = mode_of(args)
    with progress(mode, "QE table", "layers") as cb:
        table = ws.table(cb)
    qems = args.qems if args.qems else default_qem_grid(table, args.steps, args.qem_min, args.qem_max)
    t_decode = time.perf_counter()
    data = eval_tensors(args, ws, mode)
    t_eval = time.perf_counter()
    with progress(mode, "sweep", sweep_unit(ws.evaluator.cluster)) as cb:
        rows = ev.sweep(data, qems, cb)
    rows = with_latency(args, ws, rows, mode)
    elapsed = time.perf_counter() - t0
    decode_s, eval_s = t_eval - t_decode, time.perf_counter() - t_eval
    write_csv(args.out, rows)
    if args.json:
        print(json.dumps({"model": ws.loaded.name, "quantizer": ws.quantizer, "images": len(data),
                          "distinct_plans": ev.tally.distinct, "evaluated": ev.tally.evaluated,
                          "from_store": ev.tally.from_store, "seconds": elapsed, "decode_seconds": decode_s,
                          "evaluate_seconds": eval_s, "engine": ws.evaluator.engine.name,
                          "engine_label": ws.evaluator.label(),
                          "rows": [r.to_dict() for r in rows]}, indent=2))
        return
    headers = ["method", "QEM", "bit-widths", "top-1 [95 %]", "top-5 [95 %]", "loss", "quant MSE", "avg bits", "size MB", "x"]
    latency_headers, latency_cells = latency_columns(rows)
    body = [[r.method, fmt(r.qem, 3) if r.qem is not None else "N/A", r.bit_set, with_ci(r.top1, r.top1_ci),
             with_ci(r.top5, r.top5_ci), fmt(r.loss, 3), fmt(r.quant_mse), fmt(r.avg_bits), fmt(r.size_mb),
             fmt(r.compression)] + cells + versus_cells(r.to_dict()) for r, cells in zip(rows, latency_cells)]
    print_table(headers + latency_headers + VERSUS_HEADERS, body)
    print(f"\n{VERSUS_NOTE}\n{ws.loaded.name}, {ws.quantizer}, {len(data)} images, {len(qems)} QEMs, "
          f"{ev.tally.distinct} distinct plans (float32 included): {ev.tally.evaluated} evaluated, "
          f"{ev.tally.from_store} from the results store, {elapsed:.1f} s on {ws.evaluator.where()} "
          f"(decode {decode_s:.1f} s, evaluation {eval_s:.1f} s with {ws.evaluator.label()})")


def run(args) -> None:
    if args.compare:
        compare.cmd_compare(args)
    else:
        cmd_sweep(args)


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="Table-2 style sweep over QEMs (each distinct plan evaluated once)")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--qems", type=number_list("qem"), help="explicit QEMs, e.g. 5,20,80")
    p.add_argument("--qem-min", type=number("qem"), default=1.0)
    p.add_argument("--qem-max", type=number("qem"), default=None, help="default: where the last layer reaches its lowest bit-width")
    p.add_argument("--steps", type=number("steps"), default=12,
                   help="QEMs on the default grid (1..10000, default 12)")
    p.add_argument("--out", help="also write the table as CSV")
    compare.add_compare_args(p)
    add_latency_arg(p)
    p.set_defaults(run=run)
