"""Activation quantization on EfficientNet-Lite0 (issue #20): float32, W8A8 with each activation range
method, onnxruntime.quantization.quantize_static (QDQ, per channel) with each of its calibration
methods, and Fisher-budgeted plans at 8/6/5/4 average bits, weights only vs weights + 8-bit
activations. One JSON line per configuration on stdout (and in --out).

MixQuant's W+A plans are evaluated by ONNX Runtime here, on the project's float graph with the
plan's fake-quantized weights as initializers and a QuantizeLinear/DequantizeLinear pair (the
recipe's scale and zero point) on the input of every layer with a range: the same computation as
the torch engine's hooks (``--check N`` compares the two on N images), several times faster on a
CPU. quantize_static gets the same float graph (as a file), the same calibration images through a
CalibrationDataReader (same preprocessing) and is evaluated on the same images.

    MIXQUANT_DATA=/work/shared/data python benchmarks/act_quant.py --calib-images 256 --out results.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from mixquant_core.data.image_sets import default_calib_dir, default_eval_dir, open_calibration_folder, open_image_folder
from mixquant_core.data.load import load_tensors
from mixquant_core.evaluation.engines.onnxruntime_engine import new_session, planned_weights, run_session
from mixquant_core.evaluation.engines.torch_engine import TorchEngine
from mixquant_core.export.onnx import INT8_WEIGHTS
from mixquant_core.models.layers import weight_ref
from mixquant_core.models.onnx_graph import float_graph, set_initializers, state_initializers
from mixquant_core.models.registry import load_model
from mixquant_core.quant.act_calibration import ACT_METHODS, calibrate
from mixquant_core.quant.activations import ActQuant
from mixquant_core.quant.recipe import Recipe
from mixquant_core.workspace import Workspace


def qdq_graph(model, proto, bits, recipe) -> onnx.ModelProto:
    """``proto`` with the plan's fake-quantized weights and a Q/DQ pair on each listed layer's input."""
    tensors = state_initializers(model, proto)
    if bits:
        tensors.update(planned_weights(model, bits, recipe))
    set_initializers(proto, tensors)
    acts = recipe.acts if isinstance(recipe, Recipe) else None
    if acts is None:
        return proto
    by_key = {weight_ref(model, name).key: name for name in acts.ranges}
    nodes, done = [], set()
    for node in proto.graph.node:
        name = by_key.get(node.input[1]) if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 else None
        if name is not None:
            scale, zp = acts.qparams(name)
            # x_hat = (clip(round(x / s) + z, 0, 255) - z) * s as plain arithmetic (Round: half to even,
            # as torch.round and QuantizeLinear): ONNX Runtime keeps its usual graph optimisations,
            # which rewrite explicit QuantizeLinear/DequantizeLinear pairs of a float-weight graph
            # (Lite0 W8A8, 8 images: max |logit difference| to the torch hooks 4.4 with them).
            k = f"{name}.act_"
            proto.graph.initializer.extend([numpy_helper.from_array(np.array(v, dtype=np.float32), k + n) for n, v in
                                            (("s", scale), ("z", float(zp)), ("lo", 0.0), ("hi", float(2**acts.bits - 1)))])
            nodes += [helper.make_node("Div", [node.input[0], k + "s"], [k + "1"]),
                      helper.make_node("Round", [k + "1"], [k + "2"]),
                      helper.make_node("Add", [k + "2", k + "z"], [k + "3"]),
                      helper.make_node("Clip", [k + "3", k + "lo", k + "hi"], [k + "4"]),
                      helper.make_node("Sub", [k + "4", k + "z"], [k + "5"]),
                      helper.make_node("Mul", [k + "5", k + "s"], [k + "6"])]
            d = k + "6"
            node.input[0] = d
            done.add(name)
        nodes.append(node)
    missing = set(acts.ranges) - done
    if missing:
        raise SystemExit(f"no graph node found for {sorted(missing)[:3]}")
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


def openvino_top1(blob: bytes, data, batch: int = 8):
    """Top-1 % of an ONNX file in OpenVINO's CPU plugin (f32 hint), or None without openvino."""
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    compiled = core.compile_model(core.read_model(blob, b""), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    buffer, hits = torch.empty((batch, *data.image_shape)), 0
    for pixels, y in data.pixel_batches(batch):
        hits += int((compiled(data.to_inputs(pixels, buffer).numpy())[0].argmax(1) == y.numpy()).sum())
    return 100.0 * hits / len(data)


def evaluate_ort(model, data, bits, recipe, image_shape):
    proto = qdq_graph(model, float_graph(model, image_shape), bits, recipe)
    return run_session(new_session(proto.SerializeToString()), data, 8)


CALIB_CHUNK = 16  # images whose every intermediate tensor ORT's histogram calibrators hold at once


def _histograms_in_chunks():
    """ORT's Entropy / Percentile calibrators keep every intermediate tensor of every calibration
    image before building their histograms (Lite0: ~6 GB for 256 images, more than this machine
    could give them in an earlier run). Their collector keeps its histograms across calls and merges
    each new batch into them (ORT's own ``merge_histogram``, which widens the range as needed), so
    feed them CALIB_CHUNK images per call: all the images are seen, memory stays bounded."""
    from onnxruntime.quantization.calibrate import HistogramCalibrater

    if getattr(HistogramCalibrater.collect_data, "chunked", False):
        return
    whole = HistogramCalibrater.collect_data

    def collect_data(self, data_reader):
        while True:
            chunk = [x for x in (data_reader.get_next() for _ in range(CALIB_CHUNK)) if x]
            if not chunk:
                return
            whole(self, _ListReader(chunk))

    collect_data.chunked = True
    HistogramCalibrater.collect_data = collect_data


class _ListReader:
    def __init__(self, items):
        self.items = iter(items)

    def get_next(self):
        return next(self.items, None)


def quantize_static_model(model, image_shape, calib, method: str) -> bytes:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    _histograms_in_chunks()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": calib.inputs(i, i + 1).numpy()} for i in range(len(calib))])

        def get_next(self):
            return next(self.batches, None)

    proto = float_graph(model, image_shape)
    set_initializers(proto, state_initializers(model, proto))
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = (os.path.join(tmp, f) for f in ("float.onnx", "pre.onnx", "q.onnx"))
        onnx.save(proto, src)
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        quantize_static(pre, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method))
        with open(dst, "rb") as fh:
            return fh.read()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=default_eval_dir())
    p.add_argument("--calib", default=default_calib_dir())
    p.add_argument("--calib-images", type=lambda t: int(t), default=256)
    p.add_argument("--limit", type=lambda t: int(t), default=None)
    p.add_argument("--only", default="float,w8a8,points,ort,budget,extra", help="which groups to run")
    p.add_argument("--methods", default=",".join(ACT_METHODS))
    p.add_argument("--default-method", default="minmax", help="the activation method of the budget group")
    p.add_argument("--avgs", default="8,6,5,4", help="average bits of the Fisher-budgeted plans")
    p.add_argument("--check", type=lambda t: int(t), default=0, help="compare ORT Q/DQ with the torch engine on N images")
    p.add_argument("--ranges", choices=("weights", "loss"), default="weights",
                   help="weight ranges of the budget group's plans: the weights' own, or loss-aware on the calibration images")
    p.add_argument("--ort-methods", default="MinMax,Entropy,Percentile", help="quantize_static's calibration methods")
    p.add_argument("--points-scheme", default="per-channel",
                   help="weight scheme of the 'points' group (ONNX Runtime runs affine per-channel integer convs "
                        "on its reference kernel: symmetric for a fast file)")
    p.add_argument("--budget-scheme", default="per-channel", help="budget group: the weight scheme")
    p.add_argument("--budget-points", action="store_true",
                   help="budget group: only W+A8 with output points (models/act_points.py), by the project's ORT engine")
    p.add_argument("--out")
    args = p.parse_args()
    only = set(args.only.split(","))
    torch.set_num_threads(2)
    loaded = load_model("efficientnet_lite0")
    model = loaded.model.eval()
    data = load_tensors(open_image_folder(args.data).subset(args.limit), loaded.preprocess)
    calib = load_tensors(open_calibration_folder(args.calib, args.calib_images), loaded.preprocess)
    shape = data.image_shape
    ws = Workspace(loaded, "per-channel", device="cpu", engine="onnxruntime")
    names = [layer.name for layer in ws.layers]
    out = open(args.out, "a") if args.out else None

    def record(**row):
        row.update(images=len(data), calib_images=len(calib), load=os.getloadavg()[0])
        line = json.dumps(row)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    def timed(fn, *a):
        start = time.perf_counter()
        got = fn(*a)
        return got, time.perf_counter() - start

    acts = {}

    def acts_for(method, keep=(), outputs=False):
        # outputs=False for the groups evaluated by qdq_graph, which quantizes layer inputs only
        key = (method, tuple(keep), outputs)
        if key not in acts:
            acts[key], sec = timed(calibrate, model, names, calib, 8, method, None, keep, "cpu", 32, outputs)
            print(f"calibrated {method} (keep {list(keep)}, outputs {outputs}) in {sec:.0f} s", file=sys.stderr)
        return acts[key]

    int8 = {n: 8 for n in names}
    if args.check:
        sub = load_tensors(open_image_folder(args.data).subset(args.check), loaded.preprocess)
        recipe = Recipe("per-channel", acts=acts_for(args.default_method))
        a = evaluate_ort(model, sub, int8, recipe, shape)
        b = TorchEngine("cpu").evaluate(model, sub, int8, recipe)
        record(config="check ort-qdq vs torch", ort_top1=a.top1, torch_top1=b.top1,
               same_hits=int((a.hit1 == b.hit1).sum()), ort_loss=a.loss, torch_loss=b.loss)
    if "float" in only:
        m, sec = timed(evaluate_ort, model, data, None, "per-channel", shape)
        record(config="float32", top1=m.top1, top5=m.top5, loss=m.loss, seconds=sec)
    if "w8a8" in only:
        m, sec = timed(evaluate_ort, model, data, int8, "per-channel", shape)
        record(config="W8 per-channel, float activations", top1=m.top1, top5=m.top5, loss=m.loss, seconds=sec)
        for method in args.methods.split(","):
            m, sec = timed(evaluate_ort, model, data, int8, Recipe("per-channel", acts=acts_for(method)), shape)
            record(config=f"W8A8 mixquant {method}", top1=m.top1, top5=m.top5, loss=m.loss, seconds=sec)
    if "points" in only:  # output points (models/act_points.py): the project's engines, and the exported file
        from mixquant_core.evaluation.engines.onnxruntime_engine import OnnxRuntimeEngine
        from mixquant_core.export.onnx import onnx_bytes

        scheme = args.points_scheme
        pws = Workspace(loaded, scheme, device="cpu", engine="onnxruntime")
        for outputs in (False, True):
            recipe = Recipe(scheme, acts=acts_for(args.default_method, outputs=outputs))
            label = f"W8A8 ({scheme}) mixquant {args.default_method}, {'with output points' if outputs else 'layer inputs only'}"
            m, sec = timed(OnnxRuntimeEngine().evaluate, model, data, int8, recipe)
            record(config=label, engine="onnxruntime (fake-quant)", points=len(recipe.acts.outputs), top1=m.top1, top5=m.top5,
                   loss=m.loss, seconds=sec)
            plan = pws.plan_from_bits(pws.uniform(8))
            for choice in INT8_WEIGHTS:  # exact (the default) and signed int8 weights
                blob = onnx_bytes(model, plan, loaded.preprocess, recipe=recipe, int8_weights=choice)
                m, sec = timed(run_session, new_session(blob), data, 8)
                record(config=label, engine=f"exported file ({choice} int8 weights), ORT integer kernels", top1=m.top1,
                       top5=m.top5, loss=m.loss, seconds=sec, megabytes=len(blob) / 1e6, openvino_top1=openvino_top1(blob, data))
    if "ort" in only:
        for method in args.ort_methods.split(","):
            try:
                blob, qsec = timed(quantize_static_model, model, shape, calib, method)
                m, sec = timed(run_session, new_session(blob), data, 8)
                record(config=f"W8A8 quantize_static {method}", top1=m.top1, top5=m.top5, loss=m.loss,
                       seconds=sec, calibrate_seconds=qsec)
            except Exception as exc:  # noqa: BLE001 - report and go on with the next method
                record(config=f"W8A8 quantize_static {method}", error=f"{type(exc).__name__}: {exc}"[:300])
    if "extra" in only:
        stem = names[0]
        m, sec = timed(evaluate_ort, model, data, int8, Recipe("per-channel", acts=acts_for(args.default_method, [stem])), shape)
        record(config=f"W8A8 mixquant {args.default_method}, first conv input float", top1=m.top1, top5=m.top5,
               loss=m.loss, seconds=sec)
    if "budget" in only:
        scheme = args.budget_scheme
        if args.ranges == "loss" or scheme != "per-channel":
            ws = Workspace(loaded, scheme, device="cpu", engine="onnxruntime", ranges=args.ranges,
                           calib=calib if args.ranges == "loss" else None)
        weights = ws.recipe  # the scheme, or a Recipe with the loss-aware ranges
        ranges = getattr(weights, "weight_ranges", None)
        ws.fisher(calib)
        for avg in [float(a) for a in args.avgs.split(",")]:
            bits = ws.named(ws.budget_bits("fisher", avg_bits=avg, calib=calib))
            size = ws.size(list(bits.values()))
            rows = [(f"weights only ({args.ranges} ranges)", weights),
                    (f"W+A8 ({args.ranges} ranges)", Recipe(scheme, ranges, acts_for(args.default_method)))]
            if args.budget_points:  # the default since output points: W+A8 with them, by the project's engine
                rows = [(f"W+A8 with output points ({scheme}, {args.ranges} ranges)",
                         Recipe(scheme, ranges, acts_for(args.default_method, outputs=True)))]
            for label, recipe in rows:
                if args.budget_points:
                    from mixquant_core.evaluation.engines.onnxruntime_engine import OnnxRuntimeEngine

                    m, sec = timed(OnnxRuntimeEngine().evaluate, model, data, bits, recipe)
                else:
                    m, sec = timed(evaluate_ort, model, data, bits, recipe, shape)
                record(config=f"fisher {avg} avg bits, {label}", avg_bits=size.avg_bits, top1=m.top1, top5=m.top5,
                       loss=m.loss, seconds=sec)
                if args.budget_points:  # the deployable file of the same plan (exact int8 weights, the default)
                    from mixquant_core.export.onnx import onnx_bytes

                    blob = onnx_bytes(model, ws.plan_from_bits([bits[n] for n in names]), loaded.preprocess, recipe=recipe)
                    m, sec = timed(run_session, new_session(blob), data, 8)
                    record(config=f"fisher {avg} avg bits, {label}", engine="exported file, ORT integer kernels",
                           avg_bits=size.avg_bits, top1=m.top1, top5=m.top5, loss=m.loss, seconds=sec,
                           megabytes=len(blob) / 1e6, openvino_top1=openvino_top1(blob, data))


if __name__ == "__main__":
    main()
