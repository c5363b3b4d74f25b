"""ONNX export file size against the size accounting (plans/size.py) for Lite0: uniform 8/4/2 bits
and two mixed plans, and how much of the difference is 3/5/6/7-bit codes in 4/8-bit containers.

    python benchmarks/onnx_sizes.py [--quantizer asymmetric]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mixquant_core.export.onnx import onnx_bytes, onnx_size_report  # noqa: E402
from mixquant_core.export.packed import quantized_model_bytes, size_report  # noqa: E402
from mixquant_core.models.registry import build_model  # noqa: E402
from mixquant_core.workspace import Workspace  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--quantizer", default="asymmetric")
    args = p.parse_args(argv)
    loaded = build_model(args.model)
    ws = Workspace(loaded, args.quantizer, device="cpu", engine="torch")
    plans = {f"uniform {b}": ws.uniform(b) for b in (8, 4, 2)}
    plans["mixed, least QE at 5 avg bits"] = ws.budget_bits("qe", avg_bits=5)
    plans["mixed, least QE at 3.5 avg bits"] = ws.budget_bits("qe", avg_bits=3.5)
    print(f"# {args.model}, {args.quantizer}: bytes of the ONNX file vs the size accounting and the packed safetensors file")
    print("| plan | bit-widths | avg bits | accounted MB | safetensors MB | ONNX MB | ONNX vs accounted | container padding MB | rest (graph, metadata) MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, bits in plans.items():
        plan = ws.plan_from_bits(bits)
        data = onnx_bytes(loaded.model, plan, loaded.preprocess)
        r = onnx_size_report(data, loaded.model, plan, args.quantizer)
        st = size_report(quantized_model_bytes(loaded.model, plan), loaded.model)
        rest = r["bytes"] - r["accounted_bytes"] - r["container_padding_bytes"]
        print(f"| {name} | {', '.join(str(b) for b in sorted(set(bits.tolist()), reverse=True))} | {plan.size['avg_bits']:.2f} | "
              f"{r['accounted_bytes'] / 1e6:.3f} | {st['bytes'] / 1e6:.3f} | {r['bytes'] / 1e6:.3f} | {r['difference_pct']:+.1f} % | "
              f"{r['container_padding_bytes'] / 1e6:.3f} | {rest / 1e6:.3f} |")


if __name__ == "__main__":
    main()
