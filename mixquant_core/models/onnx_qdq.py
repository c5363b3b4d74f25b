"""Activation quantization as a graph edit: a QuantizeLinear -> DequantizeLinear pair (uint8, per
tensor) on the data input of every node that consumes a planned layer's weight, with the (scale,
zero-point) of ``quant.activations.act_qparams``: the grid the torch engine's input hooks use
(``quantized_inputs``), so both engines compute the same codes. Used by the ONNX Runtime engine
(float fake-quantized weights) and by the export (export/onnx_qdq.py reads the pairs back).

A layer's weight is found by its initializer name: consumed by a Conv or Gemm (data input 0) or a
MatMul (through a Transpose: the other input). A weight consumed otherwise (an attention's packed
in_proj_weight is sliced) has no single data input: ``OnnxExportError`` names it (the engine then
evaluates with torch).

A pair goes before the zero Pads that lead into its node (a "same"-padded Conv traces as Pad ->
Conv): a zero pad commutes with the quantizer, whose grid holds 0 exactly (the zero-point), so the
codes are the same, and the runtimes then see Pad -> Conv (ONNX Runtime folds the Pad into the
Conv) and a QuantizeLinear right after the producing layer (its QLinearConv fusion).

Output points (models/act_points.py) get one pair on their tensor, right after the node making
it, and every reader of the tensor reads its DequantizeLinear; a layer reading such a tensor on
its own grid takes those codes and gets no pair of its own (quantizing them again would give the
same codes).

Names, per layer NAME: ``NAME.input_scale`` (float32 []), ``NAME.input_zero_point`` (uint8 []),
nodes ``NAME.input_quantize``/``NAME.input_dequantize`` (one pair per consuming node, suffixed
``_1``, ``_2``.. past the first); per output point MODULE: ``MODULE.output_scale`` and
``MODULE.output_zero_point``. An export then drops node names and renames the pairs' outputs
(export/onnx_compact.py): readers find a pair by its scale and zero-point initializers.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from .onnx_graph import OnnxExportError

WEIGHT_INPUT = {"Conv": 1, "Gemm": 1, "MatMul": 1}
ACT_SCALE, ACT_ZERO_POINT = ".input_scale", ".input_zero_point"
OUT_SCALE, OUT_ZERO_POINT = ".output_scale", ".output_zero_point"


def node_users(graph) -> Dict[str, List[int]]:
    """Tensor name -> positions in ``graph.node`` of the nodes reading it."""
    users: Dict[str, List[int]] = {}
    for k, node in enumerate(graph.node):
        for i in node.input:
            users.setdefault(i, []).append(k)
    return users


def node_producers(graph) -> Dict[str, object]:
    """Tensor name -> the node that outputs it."""
    return {o: n for n in graph.node for o in n.output}


def _constant_values(graph) -> Dict[str, object]:
    """Tensor name -> TensorProto of every initializer and Constant node's value."""
    out = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            out[node.output[0]] = node.attribute[0].t
    return out


def _is_zero(tensor) -> bool:
    """A float32 scalar 0 (a Pad's value as torch traces it); anything else, even another zero, is
    not looked into (the graph may be an untrusted file's)."""
    from onnx import TensorProto

    if tensor.data_type != TensorProto.FLOAT or any(d != 1 for d in tensor.dims):
        return False
    raw = tensor.raw_data
    values = np.frombuffer(raw, "<f4") if len(raw) == 4 else np.array(tensor.float_data, np.float32)
    return values.size == 1 and values[0] == 0.0


def zero_pads(graph) -> Dict[str, int]:
    """Output -> position of every Pad that only adds zeros (constant mode, value absent or a
    constant 0; opset >= 11, whose only attribute is the mode): such a pad commutes with a
    quantizer whose grid holds 0 exactly."""
    constants = _constant_values(graph)
    out = {}
    for k, node in enumerate(graph.node):
        if node.op_type != "Pad" or any(a.name != "mode" or a.s != b"constant" for a in node.attribute):
            continue
        value = node.input[2] if len(node.input) > 2 else ""
        if value == "" or value in constants and _is_zero(constants[value]):
            out[node.output[0]] = k
    return out


def quantization_point(graph, users: Dict[str, List[int]], pads: Dict[str, int], k: int) -> int:
    """Position of the node whose data input (0) gets the pair for node ``k``'s: the first of the
    zero Pads (each read by the next only) that lead into ``k``, else ``k``."""
    while graph.node[k].input[0] in pads and len(users[graph.node[k].input[0]]) == 1:
        k = pads[graph.node[k].input[0]]
    return k


def weight_consumers(graph, users: Dict[str, List[int]], weight: str) -> List[int]:
    """Positions in ``graph.node`` of every node computing with ``weight`` (its name in the graph)
    on its data input 0; [] when one of its users is not such a node."""
    out = []
    for k in users.get(weight, []):
        node = graph.node[k]
        if node.op_type == "Transpose":  # a Linear layer on 3-D inputs: x @ W^T
            follow = users.get(node.output[0], [])
            if not follow or any(graph.node[j].op_type != "MatMul" or graph.node[j].input[1] != node.output[0] for j in follow):
                return []
            out += follow
        elif node.op_type in WEIGHT_INPUT and list(node.input).index(weight) == WEIGHT_INPUT[node.op_type]:
            out.append(k)
        else:
            return []
    return out


def _qparam_inits(numpy_helper, scale_name: str, zp_name: str, scale: float, zero_point: int) -> list:
    """The float32 scale and uint8 zero-point initializers of an activation grid."""
    return [numpy_helper.from_array(np.array(scale, dtype=np.float32), scale_name),
            numpy_helper.from_array(np.array(zero_point, dtype=np.uint8), zp_name)]


def _qdq(helper, tensor: str, scale_name: str, zp_name: str, tag: str) -> tuple:
    """QuantizeLinear and DequantizeLinear nodes of a pair on ``tensor``, named after ``tag``."""
    q = helper.make_node("QuantizeLinear", [tensor, scale_name, zp_name], [tag + "_q"], name=tag + "_quantize")
    dq = helper.make_node("DequantizeLinear", [tag + "_q", scale_name, zp_name], [tag + "_dq"], name=tag + "_dequantize")
    return q, dq


def insert_act_qdq(graph, weights: Dict[str, str], qparams: Dict[str, Tuple[float, int]],
                   outputs: Optional[Dict[str, Tuple[str, float, int]]] = None) -> None:
    """Q/DQ on the data input of each consumer of ``weights[name]`` (name -> the weight's tensor
    name in ``graph``), before the zero Pads leading into it, for every ``name`` in ``qparams``
    (name -> (scale, zero_point)); and one on each tensor of ``outputs`` (tensor -> (module,
    scale, zero_point)) that all its readers read."""
    from onnx import helper, numpy_helper

    users = node_users(graph)
    new_nodes: Dict[int, list] = {}  # position of the node reading the pair -> its Q/DQ nodes
    shared: Dict[str, Tuple[float, int]] = {}  # an output pair's DQ output -> its (scale, zero_point)
    producers = {o: k for k, node in enumerate(graph.node) for o in node.output}
    for tensor, (module, scale, zero_point) in (outputs or {}).items():
        readers = users.get(tensor, [])
        if tensor not in producers or not readers:
            raise OnnxExportError(f"the output of module '{module}' is not a tensor of the ONNX graph that a node reads")
        graph.initializer.extend(_qparam_inits(numpy_helper, module + OUT_SCALE, module + OUT_ZERO_POINT, scale, zero_point))
        q, dq = _qdq(helper, tensor, module + OUT_SCALE, module + OUT_ZERO_POINT, module + ".output")
        for k in readers:
            node = graph.node[k]
            node.input[:] = [dq.output[0] if i == tensor else i for i in node.input]
        new_nodes.setdefault(min(readers), []).extend([q, dq])  # before its first reader
        shared[dq.output[0]] = (float(np.float32(scale)), int(zero_point))
    users, pads = node_users(graph), zero_pads(graph)
    for name, (scale, zero_point) in qparams.items():
        consumers = weight_consumers(graph, users, weights[name])
        if not consumers:
            raise OnnxExportError(f"layer '{name}' has no single input in the ONNX graph to quantize "
                                  "(its weight is not used by one Conv/Gemm/MatMul)")
        own = 0
        for consumer in consumers:
            k = quantization_point(graph, users, pads, consumer)
            node = graph.node[k]
            if shared.get(node.input[0]) == (float(np.float32(scale)), int(zero_point)):
                continue  # an output pair on the same grid already quantizes this input
            tag = name + ".input" + (f"_{own}" if own else "")
            if own == 0:
                graph.initializer.extend(_qparam_inits(numpy_helper, name + ACT_SCALE, name + ACT_ZERO_POINT, scale, zero_point))
            q, dq = _qdq(helper, node.input[0], name + ACT_SCALE, name + ACT_ZERO_POINT, tag)
            node.input[0] = dq.output[0]
            new_nodes.setdefault(k, []).extend([q, dq])
            own += 1
    ordered = []
    for k, node in enumerate(graph.node):
        ordered += new_nodes.get(k, []) + [node]
    del graph.node[:]
    graph.node.extend(ordered)  # each pair just before the node reading it: still topologically sorted
