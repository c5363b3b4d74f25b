"""Reading an export's activation quantization back (its pairs are written by models/onnx_qdq.py):
every QuantizeLinear must feed exactly its DequantizeLinear, read one layer's uint8 scalar
zero-point and finite positive float32 scale, stand on that layer's input (directly, or before the
zero Pads leading to it) once per node using its weight, and agree with the plan's activation ranges."""
from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np

from ..models.layers import key_for_name
from ..models.onnx_qdq import (ACT_SCALE, ACT_ZERO_POINT, node_producers, node_users, quantization_point, weight_consumers,
                               zero_pads)
from .untrusted import OnnxFileError, untrusted_text


def is_act_dequantize(node, producers: Dict[str, object]) -> bool:
    """A DequantizeLinear of activation codes (its input made by a QuantizeLinear)."""
    src = producers.get(node.input[0]) if node.input else None
    return src is not None and src.op_type == "QuantizeLinear"


def read_act_qdq(graph, name: str) -> Dict[str, Tuple[float, int]]:
    """Layer -> (scale, zero_point) of every activation Q/DQ pair, each checked: the pair reads one
    layer's uint8 scalar zero-point and finite positive float32 scale, Q feeds only its DQ."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in graph.initializer}
    producers, users = node_producers(graph), node_users(graph)
    out: Dict[str, Tuple[float, int]] = {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        scale_name = node.input[1] if len(node.input) > 1 else ""
        shown = f"{name}: activation quantizer '{untrusted_text(node.name or scale_name, 60)}'"  # exports name no nodes
        layer = scale_name[: -len(ACT_SCALE)] if scale_name.endswith(ACT_SCALE) else ""
        if (not layer or list(node.input[1:]) != [layer + ACT_SCALE, layer + ACT_ZERO_POINT] or node.attribute
                or any(i in inits for i in node.input[:1]) or scale_name not in inits or layer + ACT_ZERO_POINT not in inits):
            raise OnnxFileError(f"{shown} is not one MixQuant writes (corrupt or edited)")
        nexts = [graph.node[k] for k in users.get(node.output[0], [])]
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
    _check_placement(graph, out, name, users, producers)
    return out


def _own_pair_output(tensor: str, layer: str, users, producers) -> bool:
    """``tensor`` comes out of one of ``layer``'s activation DequantizeLinear and feeds one node."""
    dq = producers.get(tensor)
    return dq is not None and len(users[tensor]) == 1 and is_act_dequantize(dq, producers) \
        and list(dq.input[1:]) == [layer + ACT_SCALE, layer + ACT_ZERO_POINT]


def _check_placement(graph, layers, name: str, users, producers) -> None:
    """Each layer's pairs are exactly one per node computing with its weight, on that node's data
    input or before the zero Pads leading to it: what the plan's ranges say is quantized is."""
    pads = zero_pads(graph)
    pairs: Dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            pairs[node.input[1]] = pairs.get(node.input[1], 0) + 1
    for layer in layers:
        points = [quantization_point(graph, users, pads, k) for k in weight_consumers(graph, users, key_for_name(layer))]
        read = [graph.node[k].input[0] for k in points]
        if not read or len(set(read)) != len(read) or len(read) != pairs[layer + ACT_SCALE] \
                or not all(_own_pair_output(t, layer, users, producers) for t in read):
            raise OnnxFileError(f"{name}: the activation quantizer of layer '{untrusted_text(layer)}' is not on "
                                "the input of the nodes using its weight (corrupt or edited)")


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
