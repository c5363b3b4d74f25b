"""Reading an export's activation quantization back (its pairs are written by models/onnx_qdq.py):
every QuantizeLinear must feed exactly its DequantizeLinear and read one layer's (or output
point's) uint8 scalar zero-point and finite positive float32 scale; a layer's input (directly, or
before the zero Pads leading to it) must come out of its own pair, once per node using its weight,
or of an output point's pair on the same grid; an output point's pair must be the only reader of
its tensor; and all of it must agree with the plan's activation ranges and output points."""
from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np

from ..models.act_points import FOLLOWED, PASS_THROUGH, POOL_OPS, SHAPE_OPS
from ..models.layers import key_for_name
from ..models.onnx_qdq import (ACT_SCALE, ACT_ZERO_POINT, OUT_SCALE, OUT_ZERO_POINT, node_producers, node_users,
                               quantization_point, weight_consumers, zero_pads)
from .untrusted import OnnxFileError, untrusted_text


def is_act_dequantize(node, producers: Dict[str, object]) -> bool:
    """A DequantizeLinear of activation codes (its input made by a QuantizeLinear)."""
    src = producers.get(node.input[0]) if node.input else None
    return src is not None and src.op_type == "QuantizeLinear"


def read_act_qdq(graph, name: str) -> Tuple[Dict[str, Tuple[float, int]], Dict[str, Tuple[float, int]]]:
    """(layer -> (scale, zero_point), output point -> (scale, zero_point)) of every activation Q/DQ
    pair, each checked: the pair reads one layer's or point's uint8 scalar zero-point and finite
    positive float32 scale, Q feeds only its DQ, and an output point's Q is its tensor's only reader."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in graph.initializer}
    producers, users = node_producers(graph), node_users(graph)
    layers: Dict[str, Tuple[float, int]] = {}
    outputs: Dict[str, Tuple[float, int]] = {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        scale_name = node.input[1] if len(node.input) > 1 else ""
        shown = f"{name}: activation quantizer '{untrusted_text(node.name or scale_name, 60)}'"  # exports name no nodes
        suffixes = next(((a, z) for a, z in ((ACT_SCALE, ACT_ZERO_POINT), (OUT_SCALE, OUT_ZERO_POINT)) if scale_name.endswith(a)),
                        None)
        owner = scale_name[: -len(suffixes[0])] if suffixes else ""
        if (not owner or list(node.input[1:]) != [owner + suffixes[0], owner + suffixes[1]] or node.attribute
                or any(i in inits for i in node.input[:1]) or scale_name not in inits or owner + suffixes[1] not in inits):
            raise OnnxFileError(f"{shown} is not one MixQuant writes (corrupt or edited)")
        nexts = [graph.node[k] for k in users.get(node.output[0], [])]
        if len(nexts) != 1 or nexts[0].op_type != "DequantizeLinear" or list(nexts[0].input) != [node.output[0]] + list(node.input[1:]) \
                or nexts[0].attribute:
            raise OnnxFileError(f"{shown} does not feed exactly its DequantizeLinear (corrupt or edited)")
        if suffixes[0] == OUT_SCALE and (owner in outputs or len(users.get(node.input[0], [])) != 1):
            raise OnnxFileError(f"{shown} is not the only reader of the output it quantizes (corrupt or edited)")
        scale_init, zp_init = inits[scale_name], inits[owner + suffixes[1]]
        if scale_init.data_type != TensorProto.FLOAT or list(scale_init.dims) or zp_init.data_type != TensorProto.UINT8 \
                or list(zp_init.dims):
            raise OnnxFileError(f"{shown} has a scale or zero-point that is not a float32 / uint8 scalar")
        scale, zp = float(numpy_helper.to_array(scale_init)), int(numpy_helper.to_array(zp_init))
        if not math.isfinite(scale) or scale <= 0:
            raise OnnxFileError(f"{shown} has scale {scale!r}; an activation scale must be finite and positive (corrupt or edited)")
        (outputs if suffixes[0] == OUT_SCALE else layers)[owner] = (scale, zp)
    _check_placement(graph, layers, outputs, name, users, producers)
    return layers, outputs


def _pair_of(tensor: str, producers) -> Tuple[str, str]:
    """(scale initializer, zero-point initializer) of the activation DequantizeLinear making ``tensor``,
    ("", "") where no such node makes it."""
    dq = producers.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear" or not is_act_dequantize(dq, producers):
        return "", ""
    return dq.input[1], dq.input[2]


def _check_placement(graph, layers, outputs, name: str, users, producers) -> None:
    """Each layer's input is, at every node computing with its weight (on that node's data input or
    before the zero Pads leading to it), the output of its own pair, read there only, or of an
    output point's pair on the layer's grid; each own pair serves one such node: what the plan's
    ranges say is quantized is. ``layers``: layer -> (scale, zero_point) of its grid."""
    pads = zero_pads(graph)
    pairs: Dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            pairs[node.input[1]] = pairs.get(node.input[1], 0) + 1
    for layer, qparams in layers.items():
        points = [quantization_point(graph, users, pads, k) for k in weight_consumers(graph, users, key_for_name(layer))]
        read = [graph.node[k].input[0] for k in points]
        own = 0
        for t in read:
            scale, zp = _pair_of(t, producers)
            if scale == layer + ACT_SCALE and zp == layer + ACT_ZERO_POINT and len(users[t]) == 1:
                own += 1
            elif not (scale.endswith(OUT_SCALE) and zp == scale[: -len(OUT_SCALE)] + OUT_ZERO_POINT
                      and outputs.get(scale[: -len(OUT_SCALE)]) == qparams):
                own = -1
                break
        if not read or len(set(read)) != len(read) or own != pairs.get(layer + ACT_SCALE, 0):
            raise OnnxFileError(f"{name}: the activation quantizer of layer '{untrusted_text(layer)}' is not on "
                                "the input of the nodes using its weight (corrupt or edited)")


def _served_by_points(graph, layer: str, qparams, outputs, name: str, users, producers) -> None:
    """A layer with no pair of its own reads output points' codes on its grid at every node (else
    the plan's word that its input is quantized is not true of the graph)."""
    try:
        _check_placement(graph, {layer: qparams}, outputs, name, users, producers)
    except OnnxFileError:
        raise OnnxFileError(f"{name}: layer '{untrusted_text(layer)}' has activation quantization in its plan only "
                            "(corrupt or edited)") from None


CHAIN = FOLLOWED + PASS_THROUGH  # what may stand between a layer and its output point


def _point_placed(graph, q, layer: str, users, producers, pads) -> bool:
    """The pair whose QuantizeLinear is ``q`` (an output point's) stands where models/act_points.py
    puts the points of ``layer``: on the layer's output (after its BatchNorm and ReLU/Clip, each its
    tensor's only reader), or on a tensor whose codes the layer reads as its input (before zero Pads),
    or on the input of the pool whose output that is."""
    dq_out = users[q.output[0]][0]
    consumers = weight_consumers(graph, users, key_for_name(layer))
    for k in consumers:
        x = graph.node[k].output[0]
        while x != q.input[0] and len(users.get(x, [])) == 1 and graph.node[users[x][0]].op_type in CHAIN:
            x = graph.node[users[x][0]].output[0]
        if x == q.input[0]:
            return True
    target = graph.node[dq_out].output[0]
    for k in consumers:
        t = graph.node[quantization_point(graph, users, pads, k)].input[0]
        while t != target:  # back through the layer's own pair and Reshape/Flatten (a classifier after its pool)
            node = producers.get(t)
            if node is not None and node.op_type == "DequantizeLinear" and is_act_dequantize(node, producers):
                t = producers[node.input[0]].input[0]
            elif node is not None and node.op_type in SHAPE_OPS + POOL_OPS:  # a pool's input: its own point
                t = node.input[0]
            else:
                break
        if t == target:
            return True
    return False


def checked_acts(acts, graph, name: str):
    """``acts`` (the plan's ActQuant, or None: its ranges were checked with the plan) against the
    graph's Q/DQ pairs: the same layers with the same (scale, zero-point); returns ``acts``."""
    from ..errors import MixQuantError
    from ..quant.activations import ACT_BITS

    in_graph, out_graph = read_act_qdq(graph, name)
    try:
        if acts is not None and acts.bits not in ACT_BITS:
            raise MixQuantError(f"{acts.bits}-bit activations")
        claimed = {layer: acts.qparams(layer) for layer in acts.ranges} if acts is not None else {}
        claimed_out = {m: acts.output_qparams(m) for m in acts.outputs} if acts is not None else {}
    except MixQuantError as exc:
        raise OnnxFileError(f"{name} has activation ranges that do not fit: {untrusted_text(exc, 160)} (corrupt or edited)") from None
    users, producers = node_users(graph), node_producers(graph)
    for layer in sorted(set(claimed) - set(in_graph)):
        _served_by_points(graph, layer, claimed[layer], out_graph, name, users, producers)
    for layer in sorted(set(in_graph)):
        shown = untrusted_text(layer)
        if layer not in claimed:
            raise OnnxFileError(f"{name}: layer '{shown}' has activation quantization in its graph only (corrupt or edited)")
        scale, zp = in_graph[layer]
        want_scale, want_zp = claimed[layer]
        if zp != want_zp or np.float32(scale) != np.float32(want_scale):
            raise OnnxFileError(f"{name}: layer '{shown}' quantizes its input with scale {scale:.6g} and zero-point {zp}, "
                                f"its range gives {want_scale:.6g} and {want_zp} (corrupt or edited)")
    for module in sorted(set(claimed_out) | set(out_graph)):
        shown = untrusted_text(module)
        if module not in out_graph or module not in claimed_out:
            raise OnnxFileError(f"{name}: the output of '{shown}' is quantized in its "
                                f"{'plan' if module in claimed_out else 'graph'} only (corrupt or edited)")
        (scale, zp), (want_scale, want_zp) = out_graph[module], claimed_out[module]
        if zp != want_zp or np.float32(scale) != np.float32(want_scale):
            raise OnnxFileError(f"{name}: the output of '{shown}' is quantized with scale {scale:.6g} and zero-point {zp}, "
                                f"its range gives {want_scale:.6g} and {want_zp} (corrupt or edited)")
    if out_graph:
        pads = zero_pads(graph)
        quantizers = {n.input[1]: n for n in graph.node if n.op_type == "QuantizeLinear"}  # one per point (read_act_qdq)
        for module in sorted(out_graph):
            layer = acts.outputs[module][0]
            if layer not in claimed or not _point_placed(graph, quantizers[module + OUT_SCALE], layer, users, producers, pads):
                raise OnnxFileError(f"{name}: the output of '{untrusted_text(module)}' is not quantized where its plan "
                                    f"puts it (at layer '{untrusted_text(layer)}') (corrupt or edited)")
    return acts
