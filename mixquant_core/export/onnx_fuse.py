"""Which layers of a W+A export ONNX Runtime can run as integer kernels, and the BatchNorm folding
that lets it.

ONNX Runtime turns DQ(input) -> Conv(DQ(int8 weight)) -> Q into QLinearConv only when the Conv's
output goes straight (through a ReLU/ReLU6 it can drop) into a QuantizeLinear: here, the next
quantized layer's input, whose pair stands before the zero Pads leading to that layer
(models/onnx_qdq.py), so a Conv before a "same" padding fuses too. The traced graph has a
BatchNormalization after each Conv, which ORT cannot fold into a weight that comes out of a
DequantizeLinear, so the export folds it into the layer's per-output-channel scales
(w = (q - z) * s * k with k = gamma / sqrt(var + eps): the codes stay those of the plan; a
negative k negates symmetric codes) and its bias. A layer whose output is not quantized next (a
residual Add, the classifier) keeps bit-packed float weights, which ORT folds when it builds the
session, behind its input's Q/DQ: a float Conv on quantized inputs, the evaluation's own
arithmetic, at float speed (a DequantizeLinear weight there would be dequantized on every run).
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

from ..models.act_points import PASS_THROUGH, activation_chain  # ORT drops a ReLU/Clip before a Q whose range it holds
from ..models.onnx_qdq import node_users, zero_pads
from ..quant.codes import QuantizedLayer

FUSED_OPS = ("Conv",)
FOLDED_BIAS = "_folded_bias"  # of NAME.weight: the Conv's bias with its BatchNorm folded in


def _sole(users, name: str) -> Optional[int]:
    got = users.get(name, [])
    return got[0] if len(got) == 1 else None


def integer_layers(graph, keys: Dict[str, str], quantized_inputs, points=frozenset()) -> Dict[str, Optional[int]]:
    """Layer -> position of its BatchNormalization (None: none) for every layer in ``keys`` (name ->
    weight initializer) whose single Conv's output reaches, through an optional BatchNorm, ReLU/Clip
    then zero Pads, only the data input of a Conv/Gemm of a layer in ``quantized_inputs`` (weights),
    or, through the BatchNorm and ReLU/Clip, a tensor in ``points`` (output points: quantized there)."""
    users, pads = node_users(graph), set(zero_pads(graph).values())
    targets = {(k, 0) for w in quantized_inputs for k in users.get(w, []) if graph.node[k].op_type in ("Conv", "Gemm")}
    out = {}
    for name, key in keys.items():
        k = _sole(users, key)
        if k is None or graph.node[k].op_type not in FUSED_OPS:
            continue
        conv_out = graph.node[k].output[0]
        after_bn, tensor, acts = activation_chain(graph, users, conv_out)
        bn = users[conv_out][0] if after_bn != conv_out else None
        if points and any(t in points for t in [after_bn] + [a.output[0] for a in acts]):
            out[name] = bn
            continue
        nxt = _sole(users, tensor)
        while nxt in pads and graph.node[nxt].input[0] == tensor:
            tensor = graph.node[nxt].output[0]
            nxt = _sole(users, tensor)
        if nxt is not None and (nxt, 0) in targets and graph.node[nxt].input[0] == tensor:
            out[name] = bn
    return out


def fold_batchnorm(graph, key: str, bn_position: int, q: QuantizedLayer, symmetric: bool) -> Optional[QuantizedLayer]:
    """Fold the BatchNormalization at ``bn_position`` (after the Conv of weight ``key``) into
    ``q``'s per-channel scales and the Conv's bias, and drop it; None (graph unchanged) where
    the codes cannot carry a negative factor (affine codes, or a symmetric code -2^(b-1))."""
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    bn = graph.node[bn_position]
    gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    k = gamma / np.sqrt(var + eps)
    codes = q.codes.to(torch.int16) - q.zero_point.round().to(torch.int16) if symmetric else q.codes.to(torch.int16)
    negative = torch.from_numpy(k < 0)
    if negative.any():
        if not symmetric or (codes[negative] == -(2 ** (q.nbits - 1))).any():
            return None
        codes[negative] = -codes[negative]
    conv = next(n for n in graph.node if key in list(n.input)[1:2])
    bias = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 and conv.input[2] else 0.0
    new_bias = (k * (bias - mean) + beta).astype(np.float32)
    bias_name = key + FOLDED_BIAS
    graph.initializer.append(numpy_helper.from_array(new_bias, bias_name))
    if len(conv.input) > 2:
        conv.input[2] = bias_name
    else:
        conv.input.append(bias_name)
    conv.output[0] = bn.output[0]
    del graph.node[bn_position]
    shape = (-1,) + (1,) * (q.codes.dim() - 1)
    scale = (q.scale.double().expand(len(k), *([1] * (q.codes.dim() - 1))).reshape(-1) * torch.from_numpy(np.abs(k)))
    zero_point = q.zero_point.expand(len(k), *([1] * (q.codes.dim() - 1))).reshape(shape).clone()
    if symmetric:  # back to the stored unsigned form (quant.codes.unsigned_grid)
        codes = codes + zero_point.to(torch.int16)
    return QuantizedLayer(codes.to(torch.uint8), scale.float().reshape(shape), zero_point.float(), q.nbits, q.scheme)


def drop_idle_activations(graph) -> int:
    """Remove each ReLU/Clip that reads an activation DequantizeLinear whose whole grid lies inside
    its bounds (checked in float32, as the DequantizeLinear computes): it changes no value, and
    without it a runtime sees DQ -> GlobalAveragePool -> Q (its QLinearGlobalAveragePool). Such a
    pair is an output point put before a ReLU6 that is no module of its own (models/act_points.py).
    Returns how many were removed."""
    from onnx import numpy_helper

    from ..models.act_points import activation_bounds
    from ..models.onnx_qdq import _constant_values, node_producers

    constants, producers = _constant_values(graph), node_producers(graph)
    returned = {o.name for o in graph.output}
    idle = []
    for node in graph.node:
        dq = producers.get(node.input[0]) if node.op_type in PASS_THROUGH and node.input else None
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or node.output[0] in returned \
                or any(i not in constants for i in dq.input[1:3]):
            continue
        scale, zp = (numpy_helper.to_array(constants[i]) for i in dq.input[1:3])
        bounds = activation_bounds(constants, [node])  # the grid holds 0: bounds that leave it out cannot hold it
        if scale.size != 1 or zp.size != 1 or zp.dtype != np.uint8 or bounds is None:
            continue
        s, z = np.float32(scale.reshape(())), np.float32(zp.reshape(()))
        if bounds[0] <= np.float32(-z) * s and np.float32(255 - z) * s <= bounds[1]:
            idle.append(node)
    for node in idle:
        for other in graph.node:
            other.input[:] = [node.input[0] if i == node.output[0] else i for i in other.input]
        graph.node.remove(node)
    return len(idle)
