"""Constant shape arithmetic of an untrusted graph, evaluated with bounds, so that the sizes the
data-sized ops (ConstantOfShape, Expand, Pad) read are known before anything runs.

torch's exporter computes some sizes with a chain of Shape/Gather/Concat/Reshape/Transpose/Slice/Cast
nodes on constants (EfficientNet-Lite's static "same" padding: every Pad's pads). ONNX's shape
inference does not carry values through all of these, so such a Pad's output shape stays unknown.
Here each node whose inputs are small known constants (or known dims of a shape) is evaluated with
ONNX's reference implementation - only ops whose output size is bounded by their inputs', and only
when that bound is small - and the sizes the data-sized ops read are put into the graph as
initializers, where shape inference sees them. A size computed from the shape of an earlier Pad's
output (timm's "same" padding, layer after layer) is known one round of inference later.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np

from .untrusted import OnnxFileError

FOLD_LIMIT = 4096  # values in a tensor evaluated here: shape arithmetic, never weights or activations
MAX_EVALUATIONS = 20_000  # nodes evaluated (about 1 ms each); Lite0's 17 paddings take 378
SAME_SIZE = frozenset({"Identity", "Cast", "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Slice", "Neg", "Abs",
                       "Floor", "Ceil", "Clip", "Concat", "Constant"})
# element-wise on broadcast inputs (Equal/Where: torch's expand(-1, ...) sizes; Mod: Swin's padding to windows)
BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Mod", "Equal", "Where"})
# Which inputs size the output of each data-sized op (the others are the data); and Reshape's shape,
# which is not an allocation but makes the shapes after it known (Swin's patch merging, whose
# output a later Pad reads).
SIZE_INPUTS = {"ConstantOfShape": (0,), "Expand": (1,), "Pad": (1, 2, 3), "Reshape": (1,)}


def _elements(shape) -> int:
    return math.prod(int(d) for d in shape)


def _output_bound(node, values: Dict[str, np.ndarray]) -> Optional[int]:
    """Values the node would make from ``values`` (an upper bound), or None when it is not one
    this module evaluates."""
    inputs = [values[i] for i in node.input if i]
    try:
        if node.op_type == "Constant":
            return sum(_elements(a.t.dims) if a.HasField("t") else len(a.ints) + len(a.floats) + 1 for a in node.attribute)
        if node.op_type == "Concat":
            return sum(v.size for v in inputs)
        if node.op_type in SAME_SIZE:
            return inputs[0].size if inputs else None
        if node.op_type in BROADCAST:
            return _elements(np.broadcast_shapes(*(v.shape for v in inputs)))
        if node.op_type == "Gather":
            return inputs[0].size * max(1, inputs[1].size)
        if node.op_type == "ConstantOfShape":
            return _elements(inputs[0].reshape(-1)) if inputs and (inputs[0] >= 0).all() else None
        if node.op_type == "Expand":
            return _elements(np.broadcast_shapes(inputs[0].shape, tuple(int(d) for d in inputs[1].reshape(-1))))
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    return None


def _shape_of(node, known_shapes: Dict[str, tuple], values: Dict[str, np.ndarray]) -> Optional[list]:
    """A Shape node's value: its input's dims, None where unknown (the batch), or None when the
    input's rank is unknown."""
    source = node.input[0]
    dims = values[source].shape if source in values else known_shapes.get(source)
    if dims is None:  # unknown rank
        return None
    attrs = {a.name: a.i for a in node.attribute}
    return list(dims)[attrs.get("start", 0):attrs.get("end", len(dims))]


def _gathered_dims(node, partial: Dict[str, list], values: Dict[str, np.ndarray]) -> Optional[np.ndarray]:
    """Gather of known dims out of a partly known shape (timm's "same" padding reads H and W of a
    [batch, C, H, W] tensor): the dims, when every one gathered is known."""
    dims, indices = partial.get(node.input[0]), values.get(node.input[1])
    if dims is None or indices is None or indices.size > FOLD_LIMIT:
        return None
    try:
        picked = np.asarray(np.array(dims, dtype=object)[indices.astype(np.int64)], dtype=object)
    except (IndexError, TypeError, ValueError):
        return None
    if any(d is None for d in picked.ravel()):
        return None
    return picked.astype(np.int64)


def _sizing_nodes(graph) -> list:
    """The nodes the data-sized ops' size inputs are computed by (transitively), in graph order:
    the only ones worth evaluating."""
    producer = {out: k for k, node in enumerate(graph.node) for out in node.output}
    wanted = [node.input[i] for node in graph.node for i in SIZE_INPUTS.get(node.op_type, ()) if i < len(node.input)]
    needed = set()
    while wanted:
        k = producer.get(wanted.pop())
        if k is not None and k not in needed:
            needed.add(k)
            wanted.extend(i for i in graph.node[k].input if i)
    return [graph.node[k] for k in sorted(needed)]


def _small_initializers(graph) -> Dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {}
    for init in graph.initializer:
        if _elements(init.dims) <= FOLD_LIMIT:
            try:
                values[init.name] = numpy_helper.to_array(init)
            except Exception:  # malformed: the checker or ONNX Runtime (in its child) refuses it
                pass
    return values


def small_constants(graph, known_shapes: Dict[str, tuple], values: Optional[Dict[str, np.ndarray]] = None
                    ) -> Dict[str, np.ndarray]:
    """Name -> value of every tensor a data-sized op's size depends on that is computable from
    constants and known dims with at most FOLD_LIMIT values at each step (``known_shapes``: dims
    of the tensors shape inference describes, None where unknown). Refused past MAX_EVALUATIONS
    nodes: Lite0's sizes take 378."""
    from onnx.reference import ReferenceEvaluator

    nodes = _sizing_nodes(graph)
    if len(nodes) > MAX_EVALUATIONS:
        raise OnnxFileError(f"the graph computes its sizes with {len(nodes)} nodes, more than the {MAX_EVALUATIONS} "
                            "an image classifier needs; refused")
    values = {**_small_initializers(graph), **(values or {})}  # ``values``: those of an earlier round
    partial: Dict[str, list] = {}  # Shape outputs with an unknown dim (the batch): dims, None where unknown
    for node in nodes:  # in graph order: topologically sorted (onnx.checker)
        if node.op_type == "Shape":
            dims = _shape_of(node, known_shapes, values)
            if dims is not None and None not in dims:
                values[node.output[0]] = np.array(dims, dtype=np.int64)
            elif dims is not None:
                partial[node.output[0]] = dims
            continue
        if node.op_type == "Gather" and node.input[0] in partial:
            picked = _gathered_dims(node, partial, values)
            if picked is not None:
                values[node.output[0]] = picked
            continue
        if node.output[0] in values or not all(i in values for i in node.input if i):
            continue
        bound = _output_bound(node, values)
        if bound is None or bound > FOLD_LIMIT:
            continue
        try:
            outputs = ReferenceEvaluator(node).run(None, {i: values[i] for i in node.input if i})
        except Exception:  # not evaluable here: shape inference and the child's limits remain
            continue
        for out, value in zip(node.output, outputs):
            values[out] = np.asarray(value)
    return values


def put_in_known_sizes(graph, values: Dict[str, np.ndarray]) -> bool:
    """Feed every data-sized op's size inputs that ``values`` knows from new initializers, for
    shape inference to read; True when the graph changed."""
    from onnx import numpy_helper

    changed = False
    initializers = {i.name for i in graph.initializer}
    for k, node in enumerate(graph.node):
        for index in SIZE_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index] in values and node.input[index] not in initializers:
                name = f"mixquant_known_size_{k}_{index}"
                graph.initializer.append(numpy_helper.from_array(values[node.input[index]], name))
                node.input[index] = name
                changed = True
    return changed
