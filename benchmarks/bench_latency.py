"""Latency of Lite0 (or --model) float32 against exported plans: uniform int8 and the QEM plan(s) of
--qems, on ONNX Runtime and OpenVINO (CPU), batch 1 (median ms/image) and batch 32 (images/s),
all in one limited child process as `mixquant bench` measures them (mixquant_core/studies/latency.py).

    python benchmarks/bench_latency.py [--qems 20] [--runs 50] [--precision f32]

The numbers are those of today's export (mixquant_core/export/onnx.py): re-measure after it changes.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mixquant_core.evaluation.latency import RUNTIMES  # noqa: E402
from mixquant_core.evaluation.latency_isolated import measure_isolated  # noqa: E402
from mixquant_core.export.onnx import onnx_bytes  # noqa: E402
from mixquant_core.models.onnx_graph import float_onnx_bytes  # noqa: E402
from mixquant_core.models.registry import build_model  # noqa: E402
from mixquant_core.studies.latency import FLOAT32, usable_runtimes  # noqa: E402
from mixquant_core.workspace import Workspace  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--quantizer", default="asymmetric")
    p.add_argument("--qems", default="20", help="comma-separated QEMs (default 20)")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--precision", default="f32")
    args = p.parse_args(argv)
    loaded = build_model(args.model)
    ws = Workspace(loaded, args.quantizer, device="cpu", engine="torch")
    shape = (3, loaded.preprocess.crop, loaded.preprocess.crop)
    plans = {"int8": ws.plan_from_bits(ws.uniform(8))}
    for qem in (float(q) for q in args.qems.split(",")):
        plans[f"QEM {qem:g}"] = ws.plan(qem)
    models = {FLOAT32: float_onnx_bytes(loaded.model, shape)}
    models.update({label: onnx_bytes(loaded.model, plan, loaded.preprocess) for label, plan in plans.items()})
    notices: list = []
    runtimes = usable_runtimes(RUNTIMES, notices)
    timed = measure_isolated(models, runtimes, shape, args.precision, args.runs, args.batch, shown=args.model)
    print(f"# {args.model}, {args.quantizer}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end; {args.runs} timed images at "
          f"batch 1, {max(2, args.runs // 10)} batches of {args.batch}")
    for line in notices + [f"{f['runtime']} cannot run {f['model']}: {f['error']}" for f in timed.failures]:
        print(f"# note: {line}")
    print(f"{'runtime':12} {'model':10} {'avg bits':>8} {'MB':>6} {'prec':>5} {'ms/image b1 [25-75 %]':>24} "
          f"{'x f32':>6} {'img/s b' + str(args.batch):>10} {'x f32':>6}")
    for r in timed.latencies:
        ref = next(x for x in timed.latencies if x.runtime == r.runtime and x.model == FLOAT32)
        bits = 32.0 if r.model == FLOAT32 else plans[r.model].size["avg_bits"]
        spread = f"{r.ms_per_image:.2f} [{r.spread[0]:.2f}, {r.spread[1]:.2f}]"
        print(f"{r.runtime:12} {r.model:10} {bits:8.2f} {len(models[r.model]) / 1e6:6.2f} {r.precision:>5} {spread:>24} "
              f"{ref.ms_per_image / r.ms_per_image:6.2f} {r.images_per_second:10.1f} "
              f"{r.images_per_second / ref.images_per_second:6.2f}")


if __name__ == "__main__":
    main()
