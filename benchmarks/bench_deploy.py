"""Deployable ONNX exports (issue #20): file size against the size accounting, and images/s of
weight-only and W8A8 files against float32 (and ONNX Runtime's own ``quantize_static`` QDQ file)
in ONNX Runtime and OpenVINO, every cell of a table measured side by side in one run (rounds
interleaved, the median of each kept).

    python benchmarks/bench_deploy.py [--sizes] [--weight-only] [--w8a8] [--models efficientnet_lite0,resnet50]

Batch 8, CPU, the machine's cores. ``--w8a8`` takes activation ranges from a min/max pass over 16
images of $MIXQUANT_DATA/imagenet-calib-1000 (random images without it); ResNet-50 has random
weights (torchvision's architecture; speed only).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from mixquant_core.export.onnx import INT8_WEIGHTS, onnx_bytes, onnx_size_report  # noqa: E402
from mixquant_core.models.onnx_graph import float_graph  # noqa: E402
from mixquant_core.models.registry import build_model  # noqa: E402
from mixquant_core.quant.recipe import Recipe  # noqa: E402
from mixquant_core.workspace import Workspace  # noqa: E402

BATCH = 8
SECONDS = 3.0  # per cell and round


def ort_session(data: bytes, default: bool = False, disable_qdq: bool = False):
    """ONNX Runtime as MixQuant opens files (``OnnxFile.session``), or with default options, as
    the README's snippet does."""
    import onnxruntime as ort

    if not default:
        from mixquant_core.evaluation.engines.onnxruntime_engine import new_session

        return new_session(data)
    options = ort.SessionOptions()
    if disable_qdq:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def ov_runner(data: bytes):
    import openvino as ov

    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        path.write_bytes(data)
        model = core.read_model(str(path))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})


def runner(data: bytes, engine: str):
    if engine == "openvino":
        return ov_runner(data)
    session = ort_session(data, default=engine == "ort-default")
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


ROUNDS = 3


def throughput(cells: dict, x: np.ndarray, rounds: Optional[int] = None) -> dict:
    """label -> median images/s over ``rounds`` (default ROUNDS) interleaved rounds of SECONDS each;
    each round starts one cell later than the one before, so no cell always runs first."""
    runs = {label: [] for label in cells}
    for fn in cells.values():
        fn(x)  # warm-up
    order = list(cells.items())
    for r in range(rounds or ROUNDS):
        for label, fn in order[r % len(order):] + order[:r % len(order)]:
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < SECONDS:
                fn(x)
                n += len(x)
            runs[label].append(n / (time.perf_counter() - start))
    return {label: statistics.median(v) for label, v in runs.items()}


def optimized_ops(data: bytes) -> dict:
    import collections

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "o.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        return collections.Counter(n.op_type for n in onnx.load(str(Path(tmp) / "o.onnx")).graph.node)


def calibration(preprocess, n: int = 16):
    import torch

    root = os.environ.get("MIXQUANT_DATA")
    if root and (Path(root) / "imagenet-calib-1000").is_dir():
        from mixquant_core.data.image_sets import open_image_folder
        from mixquant_core.data.load import load_tensors

        t = load_tensors(open_image_folder(Path(root) / "imagenet-calib-1000").subset(n), preprocess)
        return t.to_inputs(t.images)
    return torch.randn(n, 3, preprocess.crop, preprocess.crop, generator=torch.Generator().manual_seed(0))


def quantize_static_file(float_bytes: bytes, calib) -> bytes:
    """ONNX Runtime's own QDQ file: BatchNorm folded first (as its quant_pre_process does),
    per-channel int8 weights, uint8 activations, calibrated on the same images (min/max)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": calib[k:k + 1].numpy()} for k in range(len(calib))])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        folded, out = Path(tmp) / "folded.onnx", Path(tmp) / "qdq.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        ort.InferenceSession(float_bytes, options, providers=["CPUExecutionProvider"])
        quantize_static(str(folded), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return out.read_bytes()


def sizes(name: str) -> None:
    loaded = build_model(name)
    ws = Workspace(loaded, "asymmetric", device="cpu", engine="torch")
    plans = {f"uniform {b}": ws.plan_from_bits(ws.uniform(b)) for b in range(8, 1, -1)}
    plans["QEM 20 (the app's default)"] = ws.plan(20.0)
    print(f"\n# {name}, asymmetric, weight-only: ONNX file vs size accounting")
    print("| plan | avg bits | accounted MB | ONNX MB | difference MB | container padding MB |")
    print("|---|---|---|---|---|---|")
    for label, plan in plans.items():
        r = onnx_size_report(onnx_bytes(loaded.model, plan, loaded.preprocess), loaded.model, plan, "asymmetric")
        print(f"| {label} | {plan.size['avg_bits']:.2f} | {r['accounted_bytes'] / 1e6:.3f} | {r['bytes'] / 1e6:.3f} | "
              f"{(r['bytes'] - r['accounted_bytes']) / 1e6:+.3f} | {r['container_padding_bytes'] / 1e6:.3f} |")


def weight_only(name: str) -> None:
    loaded = build_model(name)
    ws = Workspace(loaded, "asymmetric", device="cpu", engine="torch")
    crop = loaded.preprocess.crop
    files = {"float32": float_graph(loaded.model, (3, crop, crop)).SerializeToString(),
             "int8 packed": onnx_bytes(loaded.model, ws.plan_from_bits(ws.uniform(8)), loaded.preprocess),
             "QEM 20 packed": onnx_bytes(loaded.model, ws.plan(20.0), loaded.preprocess),
             "4-bit packed": onnx_bytes(loaded.model, ws.plan_from_bits(ws.uniform(4)), loaded.preprocess)}
    cells = {(f, e): runner(data, e) for f, data in files.items() for e in ("ort-mixquant", "ort-default", "openvino")}
    x = np.random.default_rng(0).standard_normal((BATCH, 3, crop, crop)).astype(np.float32)
    speed = throughput(cells, x)
    print(f"\n# {name}, weight-only files, batch {BATCH}: images/s (ratio to float32 in the same runtime)")
    print("| file | ORT, MixQuant's session | ORT, default options (README snippet) | OpenVINO f32 |")
    print("|---|---|---|---|")
    for f in files:
        row = [f"{speed[(f, e)]:.1f} ({speed[(f, e)] / speed[('float32', e)]:.2f})" for e in ("ort-mixquant", "ort-default", "openvino")]
        print(f"| {f} | " + " | ".join(row) + " |")
    for f, data in files.items():
        ops = optimized_ops(data)
        print(f"- {f}: ORT's optimized graph holds DequantizeLinear x{ops.get('DequantizeLinear', 0)}, "
              f"BitwiseAnd x{ops.get('BitwiseAnd', 0)}, Conv x{ops.get('Conv', 0)}")


def w8a8(name: str, scheme: str) -> None:
    import torch

    from mixquant_core.data.image_sets import EvalTensors
    from mixquant_core.quant.act_calibration import calibrate

    loaded = build_model(name, pretrained=name != "resnet50")
    ws = Workspace(loaded, scheme, device="cpu", engine="torch")
    crop = loaded.preprocess.crop
    calib = calibration(loaded.preprocess)
    plan = ws.plan_from_bits(ws.uniform(8))
    calib_set = EvalTensors(calib, torch.zeros(len(calib), dtype=torch.long))
    float_bytes = float_graph(loaded.model, (3, crop, crop)).SerializeToString()
    files = {"float32": float_bytes}
    acts = calibrate(loaded.model, list(plan.bits), calib_set)  # min/max and output points, the defaults
    recipe = Recipe(scheme, acts=acts)
    for choice in INT8_WEIGHTS:  # exact (the default) and signed int8 weights (quantize_static's layout)
        files[f"MixQuant W8A8 ({scheme}), {choice} int8 weights"] = onnx_bytes(
            loaded.model, plan, loaded.preprocess, recipe=recipe, int8_weights=choice)
    files["quantize_static QDQ (per-channel)"] = quantize_static_file(float_bytes, calib)
    cells = {(f, e): runner(data, e) for f, data in files.items() for e in ("ort-mixquant", "openvino")}
    x = calib[:BATCH].numpy() if len(calib) >= BATCH else np.zeros((BATCH, 3, crop, crop), np.float32)
    speed = throughput(cells, x)
    print(f"\n# {name}, W8A8, batch {BATCH}: images/s (ratio to float32 in the same runtime)")
    print("| file | MB | ORT | OpenVINO f32 | ORT integer ops after optimisation |")
    print("|---|---|---|---|---|")
    for f, data in files.items():
        ops = optimized_ops(data)
        integer = ", ".join(f"{op} x{k}" for op, k in sorted(ops.items()) if op.startswith(("QLinear", "MatMulInteger", "ConvInteger")))
        row = [f"{speed[(f, e)]:.1f} ({speed[(f, e)] / speed[('float32', e)]:.2f})" for e in ("ort-mixquant", "openvino")]
        print(f"| {f} | {len(data) / 1e6:.2f} | " + " | ".join(row) + f" | {integer or '-'}; float Conv x{ops.get('Conv', 0) + ops.get('FusedConv', 0)}, "
              f"DequantizeLinear x{ops.get('DequantizeLinear', 0)} |")


def main(argv=None) -> None:
    global ROUNDS  # the cell tables' rounds: --rounds
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", action="store_true")
    p.add_argument("--weight-only", action="store_true")
    p.add_argument("--w8a8", action="store_true")
    p.add_argument("--models", default="efficientnet_lite0,resnet50")
    p.add_argument("--schemes", default="symmetric")
    p.add_argument("--rounds", type=int, default=ROUNDS, help=f"interleaved rounds per cell, median kept (default {ROUNDS})")
    args = p.parse_args(argv)
    ROUNDS = args.rounds
    every = not (args.sizes or args.weight_only or args.w8a8)
    if args.sizes or every:
        sizes("efficientnet_lite0")
    if args.weight_only or every:
        weight_only("efficientnet_lite0")
    if args.w8a8 or every:
        for name in args.models.split(","):
            for scheme in args.schemes.split(","):
                w8a8(name, scheme)


if __name__ == "__main__":
    main()
