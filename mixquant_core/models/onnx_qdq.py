"""Activation quantization as a graph edit: a QuantizeLinear -> DequantizeLinear pair (uint8, per
tensor) on the data input of every node that consumes a planned layer's weight, with the (scale,
zero-point) of ``quant.activations.act_qparams``: the grid the torch engine's input hooks use
(``quantized_inputs``), so both engines compute the same codes. Used by the ONNX Runtime engine
(float fake-quantized weights) and by the export (export/onnx_qdq.py reads the pairs back).

A layer's weight is found by its initializer name: consumed by a Conv or Gemm (data input 0) or a
MatMul (through a Transpose: the other input). A weight consumed otherwise (an attention's packed
in_proj_weight is sliced) has no single data input: ``OnnxExportError`` names it (the engine then
evaluates with torch).

Names, per layer NAME: ``NAME.input_scale`` (float32 []), ``NAME.input_zero_point`` (uint8 []),
nodes ``NAME.input_quantize``/``NAME.input_dequantize`` (one pair per consuming node, suffixed
``_1``, ``_2``.. past the first).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from .onnx_graph import OnnxExportError

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
