"""A plan as a runnable ONNX model: integer weight codes feeding DequantizeLinear, read by ONNX
Runtime, TensorRT and OpenVINO.

Each planned layer's weight initializer ``NAME.weight`` is replaced by ``NAME.weight_codes`` in the
narrowest integer type ONNX Runtime 1.32 runs for its bit-width (2 bits: int2/uint2, opset 25;
3-4 bits: int4/uint4; 5-8 bits: int8/uint8), its scale (float32) and zero-point (the codes' type),
per tensor or per output channel (axis 0) as the quantizer made them, and a DequantizeLinear node
that computes ``NAME.weight`` = (codes - zero_point) * scale: the same arithmetic as
``quantizers.dequantize``, so the weights equal the fake-quantized ones bit for bit. Affine schemes
store unsigned codes with their zero-point; symmetric schemes (symmetric, symmetric-mse) store signed codes with zero-point 0.
Everything else stays float32. metadata_props holds the plan JSON, the scheme, the preprocessing
and the model's identity, so ``mixquant load`` can evaluate the file on its own.

3-, 5-, 6- and 7-bit codes cost their container's width (4 or 8 bits): see ``container_bits``.
The file is untrusted input when read back: ``read_onnx`` parses it with onnx only (no custom
domains, no external data) and ONNX Runtime runs it on the CPU.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import MixQuantError, first_line
from ..models.layers import state_key
from ..models.onnx_graph import float_graph, set_initializers, state_initializers
from ..models.preprocess import Preprocess
from ..plans.plan import Plan
from ..quant.codes import QuantizedLayer
from ..quant.quantizers import is_symmetric

ONNX_FORMAT = "mixquant-onnx"
EXPORT_OPSET = 25  # int2/uint2 DequantizeLinear inputs need opset 25
_MAX_BYTES = 2 * 1024**3  # protobuf's limit; a bigger "ONNX file" is not one we wrote
Progress = Optional[Callable[[int, int, str], None]]


class OnnxFileError(MixQuantError):
    """An ONNX file is corrupt, not a MixQuant export, or for another model."""


def container_bits(nbits: int) -> int:
    """Bits one code occupies in the ONNX file: 2, 4 or 8."""
    return 2 if nbits <= 2 else 4 if nbits <= 4 else 8


def _code_dtype(nbits: int, signed: bool):
    import ml_dtypes

    width = container_bits(nbits)
    if width == 8:
        return np.int8 if signed else np.uint8
    return {(2, True): ml_dtypes.int2, (2, False): ml_dtypes.uint2,
            (4, True): ml_dtypes.int4, (4, False): ml_dtypes.uint4}[(width, signed)]


def _layer_tensors(key: str, q: QuantizedLayer):
    """(codes, scale, zero_point) TensorProtos and the DequantizeLinear node of one layer, whose
    weight is the initializer ``key`` (its state_dict key)."""
    from onnx import helper, numpy_helper

    signed = is_symmetric(q.scheme)
    codes = q.codes.to(torch.int16)
    zero_point = q.zero_point.round().to(torch.int16)
    if signed:  # stored unsigned with an implicit zero-point 2^(b-1) (quant.codes.unsigned_grid): undo it
        codes, zero_point = codes - zero_point, torch.zeros_like(zero_point)
    per_channel = q.scale.numel() > 1
    scale = q.scale.float().reshape(-1) if per_channel else q.scale.float().reshape(())
    zero_point = zero_point.reshape(-1) if per_channel else zero_point.reshape(())
    dtype = _code_dtype(q.nbits, signed)
    base = key
    inits = [numpy_helper.from_array(codes.numpy().astype(dtype), base + "_codes"),
             numpy_helper.from_array(scale.numpy(), base + "_scale"),
             numpy_helper.from_array(zero_point.numpy().astype(dtype), base + "_zero_point")]
    node = helper.make_node("DequantizeLinear", [i.name for i in inits], [base], name=base + "_dequantize",
                            **({"axis": 0} if per_channel else {}))
    return inits, node


def build_onnx(model: nn.Module, plan: Plan, layers: Dict[str, QuantizedLayer], preprocess: Preprocess,
               progress: Progress = None):
    """The ONNX ModelProto of ``model`` with ``layers`` as integer codes (``plan`` in its metadata)."""
    import onnx
    from onnx import helper

    plan.check_against(model)
    if list(layers) != list(plan.layers):
        raise MixQuantError("the quantized layers do not match the plan's layers")
    for name, q in layers.items():
        if q.nbits != plan.bits[name]:
            raise MixQuantError(f"layer '{name}' is quantized to {q.nbits} bits, the plan says {plan.bits[name]}")
    total = len(layers) + 2
    if progress:
        progress(0, total, "tracing the model")
    proto = float_graph(model, (3, preprocess.crop, preprocess.crop))
    set_initializers(proto, state_initializers(model, proto))  # the model's current floats
    graph = proto.graph
    planned = {state_key(model, name) for name in layers}
    kept = [init for init in graph.initializer if init.name not in planned]
    new_inits, nodes = [], []
    for k, (name, q) in enumerate(layers.items()):
        inits, node = _layer_tensors(state_key(model, name), q)
        new_inits += inits
        nodes.append(node)
        if progress:
            progress(k + 1, total, name)
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    old_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old_nodes)  # dequantize first: the graph stays topologically sorted
    del proto.opset_import[:]
    proto.opset_import.extend([helper.make_opsetid("", EXPORT_OPSET)])
    proto.ir_version = helper.find_min_ir_version_for(list(proto.opset_import))
    proto.producer_name, proto.producer_version = "mixquant-studio", "1"
    meta = {"mixquant_format": ONNX_FORMAT, "mixquant_plan": plan.to_json(indent=None),
            "mixquant_scheme": next(iter(layers.values())).scheme if layers else plan.quantizer,
            "mixquant_preprocess": json.dumps(preprocess.to_dict())}
    helper.set_model_props(proto, meta)
    if progress:
        progress(total - 1, total, "checking")
    onnx.checker.check_model(proto)
    if progress:
        progress(total, total, "done")
    return proto


def onnx_bytes(model: nn.Module, plan: Plan, preprocess: Preprocess, reconstructed=None, progress: Progress = None) -> bytes:
    """The ONNX file for ``plan``: round-to-nearest codes, or a ReconResult's learned codes."""
    from .packed import rtn_layers

    layers = rtn_layers(model, plan) if reconstructed is None else reconstructed.layers
    return build_onnx(model, plan, layers, preprocess, progress).SerializeToString()


# --- reading (untrusted) ---------------------------------------------------------------------
@dataclass
class OnnxFile:
    proto: object  # onnx.ModelProto
    plan: Plan
    scheme: str
    preprocess: Preprocess
    data: bytes

    def session(self, threads: Optional[int] = None):
        from ..evaluation.engines.onnxruntime_engine import new_session

        try:
            return new_session(self.data, threads)
        except Exception as exc:
            raise OnnxFileError(f"ONNX Runtime cannot run this file: {first_line(exc, 160)}") from None


def read_onnx(path_or_bytes, model: Optional[nn.Module] = None) -> OnnxFile:
    """Parse and check a MixQuant ONNX export (and, with ``model``, that it was made for it)."""
    import onnx

    if isinstance(path_or_bytes, (bytes, bytearray)):
        data, name = bytes(path_or_bytes), "ONNX data"
    else:
        name = f"'{os.fspath(path_or_bytes)}'"
        if not os.path.isfile(path_or_bytes):
            raise OnnxFileError(f"ONNX file {name} does not exist")
        if os.path.getsize(path_or_bytes) > _MAX_BYTES:
            raise OnnxFileError(f"{name} is larger than any ONNX file MixQuant writes")
        with open(path_or_bytes, "rb") as fh:
            data = fh.read()
    try:
        proto = onnx.load_model_from_string(data)  # never follows external-data paths
    except Exception as exc:
        raise OnnxFileError(f"{name} is not a readable ONNX file (corrupt or truncated): {first_line(exc, 120)}") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("mixquant_format") != ONNX_FORMAT:
        raise OnnxFileError(f"{name} is not a MixQuant ONNX export (no plan in its metadata; corrupt, truncated or another tool's file)")
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise OnnxFileError(f"{name} refers to external data files ('{tensor.name}'); MixQuant exports are self-contained")
    custom = sorted({n.domain for n in proto.graph.node if n.domain not in ("", "ai.onnx")})
    if custom:
        raise OnnxFileError(f"{name} uses operators of another domain ({custom[0]}); MixQuant exports use standard ONNX only")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise OnnxFileError(f"{name} is not a valid ONNX model (corrupt): {first_line(exc, 120)}") from None
    plan = Plan.from_json(meta.get("mixquant_plan", ""))
    try:
        fields = json.loads(meta.get("mixquant_preprocess", ""))
        preprocess = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    except Exception:
        raise OnnxFileError(f"{name} has unreadable preprocessing metadata (corrupt)") from None
    out = OnnxFile(proto, plan, meta.get("mixquant_scheme", ""), preprocess, data)
    if model is not None:
        check_onnx_against(out, model)
    return out


def check_onnx_against(f: OnnxFile, model: nn.Module) -> None:
    """An OnnxFileError unless ``f`` was exported from ``model``'s architecture (names and shapes)."""
    try:
        f.plan.check_against(model)
    except MixQuantError as exc:
        raise OnnxFileError(f"ONNX file is for another model: {exc}") from None
    shapes = {init.name: tuple(init.dims) for init in f.proto.graph.initializer}
    planned = {state_key(model, name) for name in f.plan.layers}
    for key, value in model.state_dict().items():
        there = shapes.get(key + "_codes" if key in planned else key)
        if there is not None and there != tuple(value.shape):
            raise OnnxFileError(f"ONNX file is for another model ({f.plan.model.get('name')}): '{key}' has shape "
                                f"{there} there, {tuple(value.shape)} here")


def onnx_size_report(data: bytes, model: nn.Module, plan: Plan, scheme: str) -> Dict[str, object]:
    """File size against the size accounting (plans/size.py), and what code containers add."""
    from .packed import accounted_bytes

    layers = plan.check_against(model)
    padding = sum((container_bits(plan.bits[l.name]) - plan.bits[l.name]) * l.params for l in layers) // 8
    accounted = accounted_bytes(model, plan, scheme)
    return {"bytes": len(data), "accounted_bytes": accounted, "container_padding_bytes": int(padding),
            "difference_pct": 100.0 * (len(data) - accounted) / accounted}


def evaluate_onnx(f: OnnxFile, data, batch_size: Optional[int] = None, progress: Progress = None):
    """Metrics of the file itself, run by ONNX Runtime on the CPU."""
    from ..evaluation.engines.onnxruntime_engine import DEFAULT_BATCH, run_session

    session = f.session()
    inputs = session.get_inputs()
    if len(inputs) != 1 or list(inputs[0].shape[1:]) != list(data.image_shape):
        raise OnnxFileError(f"the ONNX model takes input {inputs[0].shape if inputs else None}, the images are "
                            f"{list(data.image_shape)}")
    return run_session(session, data, batch_size or DEFAULT_BATCH, progress)
