"""The export's last pass over a graph: short names for its intermediate values and no node names,
so that a file holds little beyond what the size accounting counts (issue #20).

torch's exporter names every node and every intermediate value after its module path
("/_blocks.0/_depthwise_conv/Conv_output_0"), and a value's name is written once as its
producer's output and again as each consumer's input: on Lite0 these names were half of the
0.2 MB a weight-only file holds beyond its codes. Names compute nothing, and ONNX does not
require node names, so each intermediate value is renamed to a short counter ("0", "1", .. "z",
"00", ..) and every node's name is dropped. torch also writes one Constant node per use of a
value; Constant nodes of one value are merged into the first (they stay nodes: as initializers
they would be tensors the model check does not know, onnx_claims.check_against_model).

Kept as they are: the graph's input and output (what a session is fed and returns), every
initializer's name (how a reader finds a layer's codes, scales and activation quantizers) and the
names in ``keep`` (a planned layer's weight as its unpacking or DequantizeLinear makes it: how a
reader finds the nodes that compute with it). Readers find everything else by the graph's
structure, never by an intermediate name (onnx_pack.read_packed_layers, onnx_qdq.read_act_qdq).
"""
from __future__ import annotations

import itertools
import string
from typing import Dict, Iterable, Iterator, Set

DIGITS = string.digits + string.ascii_lowercase


def counter_name(k: int) -> str:
    """``k`` in base 36 (digits, then lowercase letters): the shortest names for the first values."""
    out = DIGITS[k % 36]
    while k >= 36:
        k = k // 36 - 1  # bijective: after "z" comes "00", so no length is skipped
        out = DIGITS[k % 36] + out
    return out


def short_names(taken: Set[str]) -> Iterator[str]:
    """Counter names, shortest first, skipping any in ``taken``."""
    return (name for name in map(counter_name, itertools.count()) if name not in taken)


def fixed_names(graph, keep: Iterable[str]) -> Set[str]:
    """The value names the pass leaves alone (see the module docstring)."""
    return ({v.name for v in graph.input} | {v.name for v in graph.output}
            | {i.name for i in graph.initializer} | set(keep))


def intermediate_renames(graph, fixed: Set[str]) -> Dict[str, str]:
    """Old name -> short name of every node output not in ``fixed``, numbered in graph order."""
    names = short_names(fixed)
    return {out: next(names) for node in graph.node for out in node.output if out and out not in fixed}


def duplicate_constants(graph, fixed: Set[str]) -> Dict[str, str]:
    """Output -> the output of the first Constant node of the same value, for every later one
    (torch writes a Constant per use: Lite0's 244 hold 14 values); outputs in ``fixed`` stay."""
    first: Dict[bytes, str] = {}
    out: Dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "Constant" or node.domain or len(node.output) != 1 or node.output[0] in fixed:
            continue
        value = b"".join(a.SerializeToString(deterministic=True) for a in node.attribute)
        out_name = node.output[0]
        if value in first:
            out[out_name] = first[value]
        else:
            first[value] = out_name
    return out


def compact_graph(graph, keep: Iterable[str] = ()) -> None:
    """Merge ``graph``'s duplicate Constant nodes, rename its intermediate values to short names
    and drop its node names, in place: what it computes is unchanged."""
    fixed = fixed_names(graph, keep)
    same = duplicate_constants(graph, fixed)
    for k in reversed(range(len(graph.node))):  # the first of each value precedes every reader of the others
        if graph.node[k].op_type == "Constant" and graph.node[k].output[0] in same:
            del graph.node[k]
    renames = intermediate_renames(graph, fixed)
    renames.update({dup: renames[first] for dup, first in same.items()})
    for node in graph.node:
        node.ClearField("name")  # absent, not empty: not even its field tag is written
        for field in (node.input, node.output):
            for k, value in enumerate(field):
                field[k] = renames.get(value, value)
    del graph.value_info[:]  # shape hints only (our exports write none): shape inference remakes them
