"""Where else, besides the layers' inputs, an 8-bit model quantizes activations so that a runtime
can run it as integer kernels end to end: found on the traced float graph, named by torch module.

A layer's input pair alone leaves two kinds of tensors float (models/onnx_qdq.py): a tensor that a
quantized layer reads and something else reads too (a block's input, read by the next block's first
conv and by its residual Add), and the output of a quantized layer that no quantized layer reads
next (a project conv into a residual Add, a stem conv into a MaxPool). A runtime then cannot fuse
the Add (QLinearAdd) or the producing conv (QLinearConv), and switches layouts around them.
``fusion_points`` names both as **output points**: the torch module whose output is the tensor,
with the layer it belongs to and whether that layer's input range serves it:

* shared (the tensor is a quantized layer's input, read elsewhere too): the pair stands on the
  tensor, every reader takes its codes, on the layer's own input grid;
* produced (a quantized conv's output, after its BatchNorm and ReLU; or the input of a pool whose
  output is a point, such as a last residual block's output): a new range, calibrated.

A tensor is a module's output when the module's nodes produce it and it is the only tensor they
produce that anything outside the module reads (the graph's node names carry the module scopes the
TorchScript exporter records). Where no module has the tensor as its whole output (an activation
function called twice, a functional op at the top), there is no point and the tensor stays float,
as before. The torch engine quantizes a point with a forward hook on its module; calibration checks
that the module runs once per forward (act_calibration.py).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Set, Tuple

from .onnx_qdq import _constant_values, node_producers, node_users, quantization_point, weight_consumers, zero_pads

PASS_THROUGH = ("Relu", "Clip")  # a conv's activation: the point goes after it
SHAPE_OPS = ("Reshape", "Flatten")  # move values, change none: a per-tensor grid commutes with them
POOL_OPS = ("GlobalAveragePool", "AveragePool")  # a runtime runs them on codes when both sides are points
FOLLOWED = ("BatchNormalization",)  # folded into the conv by an export (export/onnx_fuse.py)


def scope_modules(node_name: str, modules: Set[str]) -> List[str]:
    """The modules of ``modules`` (named as ``model.named_modules()``) whose scope a traced node's
    name records, outermost first: '/layer1/layer1.0/downsample/downsample.0/Conv' ->
    ['layer1', 'layer1.0', 'layer1.0.downsample', 'layer1.0.downsample.0']. A scope that is no
    module (a second call of one: 'relu_1') ends the list."""
    parts = node_name.strip("/").split("/")[:-1]
    out: List[str] = []
    for part in parts:
        here = out[-1] if out else ""
        parent = here.rsplit(".", 1)[0] if "." in here else ""
        last = here.rsplit(".", 1)[-1]
        # a child of a called Sequential/ModuleList is scoped by its full name within the parent
        options = [f"{here}.{part}" if here else part]
        if here and part.startswith(last + "."):
            options.append(f"{parent}.{part}" if parent else part)
        found = next((o for o in options if o in modules), None)
        if found is None:
            break
        out.append(found)
    return out


def repeated_modules(graph, modules: Set[str]) -> Set[str]:
    """Modules the forward calls more than once: the exporter scopes a second call 'NAME_1' (where
    no module of that name exists)."""
    out: Set[str] = set()
    for node in graph.node:
        parts = node.name.strip("/").split("/")[:-1]
        for k, part in enumerate(parts):
            head, _, tail = part.rpartition("_")
            if not (head and tail.isdigit()) or len(scope_modules("/".join(parts[:k + 1] + ["op"]), modules)) == k + 1:
                continue
            found = scope_modules("/".join(parts[:k] + [head, "op"]), modules)
            if len(found) == k + 1:
                out.add(found[-1])
    return out


def module_outputs(graph, modules: Set[str]) -> Dict[str, str]:
    """Module name -> the tensor that is its whole output in the traced ``graph``: produced by its
    nodes, and the only one of theirs read by a node outside it or returned by the graph."""
    scopes = [set(scope_modules(node.name, modules)) for node in graph.node]
    producers = {o: k for k, node in enumerate(graph.node) for o in node.output}
    graph_outputs = {o.name for o in graph.output}
    escaping: Dict[str, Set[str]] = {}
    for k, node in enumerate(graph.node):
        for t in node.input:
            p = producers.get(t)
            if p is not None:
                for m in scopes[p] - scopes[k]:
                    escaping.setdefault(m, set()).add(t)
    for t in graph_outputs:
        p = producers.get(t)
        if p is not None:
            for m in scopes[p]:
                escaping.setdefault(m, set()).add(t)
    return {m: next(iter(ts)) for m, ts in escaping.items() if len(ts) == 1}


def _producing_module(tensor: str, producers, modules: Set[str], outputs: Dict[str, str]) -> Optional[str]:
    """The innermost module whose whole output is ``tensor``, if any."""
    node = producers.get(tensor)
    if node is None:
        return None
    for m in reversed(scope_modules(node.name, modules)):
        if outputs.get(m) == tensor:
            return m
    return None


def activation_chain(graph, users, tensor: str) -> Tuple[str, str, List[object]]:
    """(after the conv's BatchNorm, after its ReLU/Clip too, those activation nodes), each node the
    sole reader of the tensor before it."""
    if len(users.get(tensor, [])) == 1 and graph.node[users[tensor][0]].op_type in FOLLOWED:
        tensor = graph.node[users[tensor][0]].output[0]
    end, acts = tensor, []
    while len(users.get(end, [])) == 1 and graph.node[users[end][0]].op_type in PASS_THROUGH:
        acts.append(graph.node[users[end][0]])
        end = acts[-1].output[0]
    return tensor, end, acts


def activation_bounds(constants, acts) -> Optional[Tuple[float, float]]:
    """The interval the activation nodes clamp to, if it holds 0 (ReLU: [0, inf); Clip: its
    constant min/max, ``constants`` as onnx_qdq._constant_values gives them); None where a bound is
    not a constant scalar or the interval leaves 0 out."""
    from onnx import numpy_helper

    lo, hi = float("-inf"), float("inf")
    for node in acts:
        if node.op_type == "Relu":
            lo = max(lo, 0.0)
            continue
        for i, (name, pick) in enumerate(((node.input[1] if len(node.input) > 1 else "", max),
                                          (node.input[2] if len(node.input) > 2 else "", min))):
            if not name:
                continue
            if name not in constants or numpy_helper.to_array(constants[name]).size != 1:
                return None
            value = float(numpy_helper.to_array(constants[name]).reshape(()))
            lo, hi = (pick(lo, value), hi) if i == 0 else (lo, pick(hi, value))
    return (lo, hi) if lo <= 0.0 <= hi else None


def fusion_points(graph, modules: Set[str], weights: Dict[str, str],
                  float_weights: Dict[str, str] = None) -> Dict[str, Tuple[str, bool, Optional[tuple]]]:
    """Module -> (layer, shared, bounds) for every output point of the traced float ``graph``
    (module names in ``modules``) whose layers ``weights`` (layer -> weight initializer) get
    quantized inputs: shared points take the layer's input range, the others need their own (see
    the docstring). ``bounds`` (lo, hi): the point is before an activation that is no module of its
    own (a ReLU6 called twice): its range is calibrated on the values clamped to ``bounds``, and
    the grid, which then clamps to a range inside them, computes the activation as well. No point
    is put on a tensor that a layer of ``float_weights`` (inputs kept float) reads."""
    users, pads, producers = node_users(graph), zero_pads(graph), node_producers(graph)
    modules = modules - repeated_modules(graph, modules)  # a hook on them would fire at every call
    outputs = module_outputs(graph, modules)
    points: Dict[str, Tuple[str, bool, Optional[tuple]]] = {}
    float_reads = {graph.node[quantization_point(graph, users, pads, k)].input[0]
                   for key in (float_weights or {}).values() for k in weight_consumers(graph, users, key)}
    read_by_layers: Dict[str, str] = {}  # tensor -> the first layer reading it as its (pre-pad) input
    for layer, key in weights.items():
        for k in weight_consumers(graph, users, key):
            p = quantization_point(graph, users, pads, k)
            tensor = graph.node[p].input[0]
            read_by_layers.setdefault(tensor, layer)
            if len(users.get(tensor, [])) > 1 and tensor not in float_reads:
                m = _producing_module(tensor, producers, modules, outputs)
                if m is not None and m not in points:
                    points[m] = (layer, True, None)
            # a classifier's input reshaped from a pool's output: the pool's output on the same grid
            # (a runtime then runs the pool on codes, QLinearGlobalAveragePool)
            source = tensor
            while source in producers and producers[source].op_type in SHAPE_OPS and len(users.get(source, [])) == 1 \
                    and len(users.get(producers[source].input[0], [])) == 1:
                source = producers[source].input[0]
            if source != tensor and source not in float_reads:
                m = _producing_module(source, producers, modules, outputs)
                if m is not None and m not in points:
                    points[m] = (layer, True, None)
    returned = {o.name for o in graph.output}
    for layer, key in weights.items():
        ks = weight_consumers(graph, users, key)
        if len(ks) != 1 or graph.node[ks[0]].op_type not in ("Conv", "Gemm"):
            continue
        before, tensor, acts = activation_chain(graph, users, graph.node[ks[0]].output[0])
        if tensor in read_by_layers or tensor in returned or tensor in float_reads:  # a layer's input, the logits
            continue
        m, bounds = _producing_module(tensor, producers, modules, outputs), None
        if m is None and acts:  # the activation is no module of its own: the point goes before it
            m, bounds = _producing_module(before, producers, modules, outputs), activation_bounds(_constant_values(graph), acts)
            if bounds is None:
                continue
        if m is not None and m not in points:
            points[m] = (layer, False, bounds)
    # the input of a pool whose output is a point, when no conv's point covers it (ResNet's last
    # block: Add, ReLU, then the pool): its own range, claimed by the layer reading the pool, so a
    # runtime runs that Add and the pool on codes too (QLinearAdd, QLinearGlobalAveragePool)
    for m, (layer, _, _) in list(points.items()):
        pool = producers.get(outputs[m])
        if pool is None or pool.op_type not in POOL_OPS:
            continue
        x = pool.input[0]
        if len(users.get(x, [])) != 1 or x in read_by_layers or x in float_reads or x in returned:
            continue
        source = _producing_module(x, producers, modules, outputs)
        if source is not None and source not in points:
            points[source] = (layer, False, None)
    return points


def point_tensors(graph, modules: Set[str], acts) -> Dict[str, Tuple[str, float, int]]:
    """Tensor -> (module, scale, zero_point) of every output point of ``acts`` (an ActQuant) in the
    traced ``graph``: what models/onnx_qdq.insert_act_qdq puts a pair on."""
    from .onnx_graph import OnnxExportError

    if not acts.outputs:
        return {}
    outputs = module_outputs(graph, modules)
    missing = [m for m in acts.outputs if m not in outputs]
    if missing:
        raise OnnxExportError(f"the output of module '{missing[0]}' is not one tensor of the ONNX graph: "
                              "its activation cannot be quantized there")
    return {outputs[m]: (m,) + tuple(acts.output_qparams(m)) for m in acts.outputs}
