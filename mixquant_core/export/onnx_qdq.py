"""Activation quantization in an ONNX graph: a QuantizeLinear -> DequantizeLinear pair (uint8, per
tensor) on the data input of every node that consumes a planned layer's weight, with the (scale,
zero-point) of ``quant.activations.act_qparams``: the grid the torch engine's input hooks use
(``quantized_inputs``), so both engines compute the same codes.

Used by the ONNX Runtime engine (float fake-quantized weights, exact fake-quant semantics) and by
the export (integer weights behind DequantizeLinear: ONNX Runtime fuses DQ -> Conv -> Q into
QLinearConv where a layer's output is quantized next). A layer's weight is found by its
initializer name: consumed by a Conv or Gemm (data input 0) or a MatMul (through a Transpose: the
other input). A weight consumed otherwise (an attention's packed in_proj_weight is sliced) has
no single data input: ``OnnxExportError`` names it (the engine then evaluates with torch).

Names, per layer NAME: ``NAME.input_scale`` (float32 []), ``NAME.input_zero_point`` (uint8 []),
nodes ``NAME.input_quantize``/``NAME.input_dequantize`` (one pair per consuming node, suffixed
``_1``, ``_2``.. past the first), so a reader finds and checks them (``read_act_qdq``).
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import numpy as np

from ..models.onnx_graph import OnnxExportError
from .untrusted import OnnxFileError, untrusted_text

WEIGHT_INPUT = {"Conv": 1, "Gemm": 1, "MatMul": 1}
ACT_SCALE, ACT_ZERO_POINT = ".input_scale", ".input_zero_point"


def _weight_consumers(graph, weight: str) -> List[Tuple[int, int]]:
    """(position in ``graph.node``, index of its data input) of every node computing with
    ``weight`` (its name in the graph); [] when one of its users is not such a node."""
    users: Dict[str, List[int]] = {}
    for k, node in enumerate(graph.node):
        for i in node.input:
            users.setdefault(i, []).append(k)
    out = []
    for k in users.get(weight, []):
        node = graph.node[k]
        if node.op_type == "Transpose":  # a Linear layer on 3-D inputs: x @ W^T
            follow = users.get(node.output[0], [])
            if not follow or any(graph.node[j].op_type != "MatMul" or graph.node[j].input[1] != node.output[0] for j in follow):
                return []
            out += [(j, 0) for j in follow]
        elif node.op_type in WEIGHT_INPUT and list(node.input).index(weight) == WEIGHT_INPUT[node.op_type]:
            out.append((k, 0))
        else:
            return []
    return out


def insert_act_qdq(graph, weights: Dict[str, str], qparams: Dict[str, Tuple[float, int]]) -> None:
    """Q/DQ on the data input of each consumer of ``weights[name]`` (name -> the weight's tensor
    name in ``graph``) for every ``name`` in ``qparams`` (name -> (scale, zero_point))."""
    from onnx import helper, numpy_helper

    new_nodes: Dict[int, list] = {}  # position of the consuming node -> its Q/DQ nodes
    for name, (scale, zero_point) in qparams.items():
        consumers = _weight_consumers(graph, weights[name])
        if not consumers:
            raise OnnxExportError(f"layer '{name}' has no single input in the ONNX graph to quantize "
                                  "(its weight is not used by one Conv/Gemm/MatMul)")
        graph.initializer.extend([numpy_helper.from_array(np.array(scale, dtype=np.float32), name + ACT_SCALE),
                                  numpy_helper.from_array(np.array(zero_point, dtype=np.uint8), name + ACT_ZERO_POINT)])
        for n, (k, index) in enumerate(consumers):
            node = graph.node[k]
            tag = name + ".input" + (f"_{n}" if n else "")
            q = helper.make_node("QuantizeLinear", [node.input[index], name + ACT_SCALE, name + ACT_ZERO_POINT],
                                 [tag + "_q"], name=tag + "_quantize")
            dq = helper.make_node("DequantizeLinear", [tag + "_q", name + ACT_SCALE, name + ACT_ZERO_POINT],
                                  [tag + "_dq"], name=tag + "_dequantize")
            node.input[index] = tag + "_dq"
            new_nodes.setdefault(k, []).extend([q, dq])
    ordered = []
    for k, node in enumerate(graph.node):
        ordered += new_nodes.get(k, []) + [node]
    del graph.node[:]
    graph.node.extend(ordered)  # each pair just before its consumer: still topologically sorted


def is_act_dequantize(node, producers: Dict[str, object]) -> bool:
    """A DequantizeLinear of activation codes (its input made by a QuantizeLinear)."""
    src = producers.get(node.input[0]) if node.input else None
    return src is not None and src.op_type == "QuantizeLinear"


def read_act_qdq(graph, name: str) -> Dict[str, Tuple[float, int]]:
    """Layer -> (scale, zero_point) of every activation Q/DQ pair, each checked: the pair reads one
    layer's uint8 scalar zero-point and finite positive float32 scale, Q feeds only its DQ."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    users: Dict[str, list] = {}
    for node in graph.node:
        for i in node.input:
            users.setdefault(i, []).append(node)
    out: Dict[str, Tuple[float, int]] = {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        shown = f"{name}: activation quantizer '{untrusted_text(node.name, 60)}'"
        scale_name = node.input[1] if len(node.input) > 1 else ""
        layer = scale_name[: -len(ACT_SCALE)] if scale_name.endswith(ACT_SCALE) else ""
        if (not layer or list(node.input[1:]) != [layer + ACT_SCALE, layer + ACT_ZERO_POINT] or node.attribute
                or any(i in inits for i in node.input[:1]) or scale_name not in inits or layer + ACT_ZERO_POINT not in inits):
            raise OnnxFileError(f"{shown} is not one MixQuant writes (corrupt or edited)")
        nexts = users.get(node.output[0], [])
        if len(nexts) != 1 or nexts[0].op_type != "DequantizeLinear" or list(nexts[0].input) != [node.output[0]] + list(node.input[1:]) \
                or nexts[0].attribute:
            raise OnnxFileError(f"{shown} does not feed exactly its DequantizeLinear (corrupt or edited)")
        scale_init, zp_init = inits[scale_name], inits[layer + ACT_ZERO_POINT]
        if scale_init.data_type != TensorProto.FLOAT or list(scale_init.dims) or zp_init.data_type != TensorProto.UINT8 \
                or list(zp_init.dims):
            raise OnnxFileError(f"{shown} has a scale or zero-point that is not a float32 / uint8 scalar")
        scale, zp = float(numpy_helper.to_array(scale_init)), int(numpy_helper.to_array(zp_init))
        if not math.isfinite(scale) or scale <= 0:
            raise OnnxFileError(f"{shown} has scale {scale!r}; an activation scale must be finite and positive (corrupt or edited)")
        out[layer] = (scale, zp)
    return out


def checked_acts(acts, graph, name: str):
    """``acts`` (the plan's ActQuant, or None: its ranges were checked with the plan) against the
    graph's Q/DQ pairs: the same layers with the same (scale, zero-point); returns ``acts``."""
    from ..errors import MixQuantError
    from ..quant.activations import ACT_BITS

    in_graph = read_act_qdq(graph, name)
    try:
        if acts is not None and acts.bits not in ACT_BITS:
            raise MixQuantError(f"{acts.bits}-bit activations")
        claimed = {layer: acts.qparams(layer) for layer in acts.ranges} if acts is not None else {}
    except MixQuantError as exc:
        raise OnnxFileError(f"{name} has activation ranges that do not fit: {untrusted_text(exc, 160)} (corrupt or edited)") from None
    for layer in sorted(set(claimed) | set(in_graph)):
        shown = untrusted_text(layer)
        if layer not in in_graph or layer not in claimed:
            raise OnnxFileError(f"{name}: layer '{shown}' has activation quantization in its "
                                f"{'plan' if layer in claimed else 'graph'} only (corrupt or edited)")
        scale, zp = in_graph[layer]
        want_scale, want_zp = claimed[layer]
        if zp != want_zp or np.float32(scale) != np.float32(want_scale):
            raise OnnxFileError(f"{name}: layer '{shown}' quantizes its input with scale {scale:.6g} and zero-point {zp}, "
                                f"its range gives {want_scale:.6g} and {want_zp} (corrupt or edited)")
    return acts
