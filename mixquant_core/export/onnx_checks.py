"""Bounds on an untrusted ONNX graph, checked before ONNX Runtime (or an image decoder) sees it.

An ONNX graph is a program: a Loop can run forever, a ConstantOfShape or an Expand can ask for as
much memory as a number in the file says, and preprocessing metadata sizes the images decoded for
it. MixQuant's own exports are image classifiers traced by torch plus DequantizeLinear, so an
allow-list of the operators those graphs hold is the robust choice (a new op is refused by name
until someone has looked at it), and:

* no operator that carries a subgraph (Loop, Scan, If) or draws random numbers;
* every tensor whose shape ONNX's shape inference can tell holds at most ``MAX_ELEMENTS`` values
  per image (``MAX_WEIGHT_ELEMENTS`` if it has no batch dim: a weight), and the ops that size
  their output from data (ConstantOfShape, Expand, Pad) have a shape known before anything runs
  (constant shape arithmetic is evaluated for this, onnx_fold.py);
* one float32 input [batch, 3, crop, crop] whose crop is the preprocessing's, at most
  ``MAX_CROP`` pixels, and one output, the logits [batch, classes].

What these cannot bound (a graph that is merely slow, or large only once it runs) is run in a
child process with a time and memory limit (onnx_isolated.py).
"""
from __future__ import annotations

import json
import math

from ..errors import first_line
from ..models.preprocess import Preprocess
from .onnx_fold import put_in_known_sizes, small_constants
from .untrusted import OnnxFileError, shown_dims, untrusted_text

# Operators of MixQuant's exports: what torch's exporter writes for the registry's image
# classifiers (EfficientNet-Lite, ResNet, MobileNet, ShuffleNet, RegNet, DenseNet, ConvNeXt...;
# transformers add Equal/Where (shape asserts, masks) and Mod (Swin's window shifts)),
# DequantizeLinear, QuantizeLinear (activations) and BitwiseAnd/Min (bit-packed weights'
# unpacking, onnx_pack.py; BitShift in files written before 2026-12-07). Element-wise, normalisation, pooling, reduction and reshaping ops only.
ALLOWED_OPS = frozenset({
    "Abs", "Add", "AveragePool", "BatchNormalization", "BitShift", "BitwiseAnd", "Cast", "Ceil", "Clip", "Concat",
    "Constant",
    "ConstantOfShape", "Conv", "DequantizeLinear", "Div", "Elu", "Equal", "Erf", "Exp", "Expand",
    "Flatten", "Floor", "Gather", "Gelu", "Gemm", "GlobalAveragePool", "GlobalMaxPool",
    "GroupNormalization", "HardSigmoid", "HardSwish", "Identity", "InstanceNormalization",
    "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax", "MatMul", "Max", "MaxPool", "Mean", "Min",
    "Mish", "Mod", "Mul", "Neg", "Pad", "Pow", "PRelu", "QuantizeLinear", "Reciprocal", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceSum", "Relu", "Reshape", "Selu", "Shape", "Sigmoid", "Slice", "Softmax", "Softplus", "Split",
    "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Transpose", "Unsqueeze", "Where",
})
# Ops whose output size is read from a tensor's values: their shape must be known up front.
SIZED_BY_DATA = frozenset({"ConstantOfShape", "Expand", "Pad"})
MAX_ELEMENTS = 2**26  # values per image in one tensor (256 MB of float32); a 1024 px stem has 2^25
MAX_WEIGHT_ELEMENTS = 2**28  # values in a tensor without a batch dim (a weight): VGG-16's largest has 2^26.6
MAX_CROP = 1024  # pixels a side of the model's input
MAX_RESIZE = 2 * MAX_CROP  # the shorter side an image is resized to before the crop
MAX_CLASSES = 1_000_000
MAX_BATCH = 1024  # images a batch might hold, for a tensor whose size grows faster than the batch
MAX_ROUNDS = 100  # of shape inference with newly known sizes (Lite0 takes 2, timm's tf_efficientnet_b0 6)
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic")


# --- operators ---------------------------------------------------------------------------------
def check_self_contained(proto, name: str) -> None:
    """No external data, no sparse or model-local function tricks, standard operators only."""
    import onnx

    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise OnnxFileError(f"{name} refers to external data files ('{untrusted_text(tensor.name)}'); "
                                "MixQuant exports are self-contained")
    if len(proto.graph.sparse_initializer) or len(proto.functions):
        raise OnnxFileError(f"{name} holds sparse initializers or local functions; MixQuant exports hold neither")
    custom = sorted({n.domain for n in proto.graph.node if n.domain not in ("", "ai.onnx")})
    if custom:
        raise OnnxFileError(f"{name} uses operators of another domain ({untrusted_text(custom[0])}); "
                            "MixQuant exports use standard ONNX only")


def check_ops(graph, name: str) -> None:
    """Every node is an allowed operator without subgraphs; the first one that is not is named."""
    import onnx

    for node in graph.node:
        if node.op_type not in ALLOWED_OPS:
            raise OnnxFileError(f"{name} uses the operator {untrusted_text(node.op_type, 40)} (node "
                                f"'{untrusted_text(node.name, 60)}'), which MixQuant exports never hold: refused, "
                                "an untrusted graph may only use the ops of an image classifier (no loops, branches "
                                "or data-sized allocations)")
        for attr in node.attribute:  # the allowed ops take none, but a subgraph must never reach ORT
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise OnnxFileError(f"{name}: node '{untrusted_text(node.name, 60)}' carries a subgraph; refused")


# --- shapes ------------------------------------------------------------------------------------
def _dims(value_info):
    """A value's dims: ints, names (symbolic dims) or None (unknown); None for an unknown rank."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def per_image_elements(dims, batch: str):
    """Values per image of a tensor of ``dims``, or None when unknown. The batch dim counts 1;
    a second one (a [batch, batch] tensor grows with the square of the batch) counts MAX_BATCH."""
    if dims is None:
        return None
    n, batches = 1, 0
    for d in dims:
        if isinstance(d, int):
            n *= d
        elif d == batch:
            n *= MAX_BATCH if batches else 1
            batches += 1
        else:
            return None
    return n


def _inferred(proto, name: str):
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise OnnxFileError(f"{name}'s graph does not check (shape inference: {untrusted_text(first_line(exc), 200)})") from None


def _shapes(inferred) -> dict:
    """Name -> dims of every value shape inference describes."""
    graph = inferred.graph
    return {v.name: _dims(v) for v in list(graph.value_info) + list(graph.output) + list(graph.input)}


def _with_known_sizes(proto, name: str):
    """The graph's shapes inferred, the data-sized ops' constant sizes evaluated and put in, and
    inferred again until no more become known (a copy: nothing reaches the file)."""
    inferred = _inferred(proto, name)
    values = None
    for _ in range(MAX_ROUNDS):  # one more round for each Pad whose size reads an earlier Pad's output
        known = {k: tuple(x if isinstance(x, int) else None for x in d) for k, d in _shapes(inferred).items() if d is not None}
        values = small_constants(inferred.graph, known, values)
        if not put_in_known_sizes(inferred.graph, values):
            break
        del inferred.graph.value_info[:]  # inferred afresh, from the known sizes
        inferred = _inferred(inferred, name)
    return inferred


def _at_batch_one(proto, batch: str):
    """A copy of ``proto`` whose input and output batch dim is 1: sizes computed from the input's
    shape become constants (per image, as every bound here counts them)."""
    import onnx

    one = onnx.ModelProto()
    one.CopyFrom(proto)
    for value in list(one.graph.input) + list(one.graph.output):
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param == batch:
                d.Clear()
                d.dim_value = 1
    del one.graph.value_info[:]
    return one


def check_shapes(proto, batch: str, name: str) -> None:
    """No tensor holds more than MAX_ELEMENTS values per image (MAX_WEIGHT_ELEMENTS without a batch
    dim), and the data-sized ops' shapes are known before anything runs."""
    inferred = _with_known_sizes(proto, name)
    shapes = _shapes(inferred)
    one_image = None  # the shapes at a batch of one image, worked out when first needed
    for node in inferred.graph.node:
        for out in node.output:
            dims = shapes.get(out)
            elements = per_image_elements(dims, batch)
            what = f"{untrusted_text(node.op_type, 40)} node '{untrusted_text(node.name, 60)}'"
            if elements is None and node.op_type in SIZED_BY_DATA:
                # A transformer sizes some of these from the input's shape (the class token expanded
                # to the batch, Swin's padding to whole windows): known once the batch is.
                if one_image is None:
                    one_image = _shapes(_with_known_sizes(_at_batch_one(proto, batch), name))
                elements = per_image_elements(one_image.get(out), batch)
            if elements is None and node.op_type in SIZED_BY_DATA:
                raise OnnxFileError(f"{name}: the {what} takes its size from values known only at run time; refused "
                                    "(an untrusted graph's allocations must be sized up front)")
            per_image = batch in dims if dims else False
            limit = MAX_ELEMENTS if per_image else MAX_WEIGHT_ELEMENTS
            if elements is not None and elements > limit:
                raise OnnxFileError(f"{name}: the {what} makes {elements} values{' per image' if per_image else ''}, "
                                    f"more than the {limit} any image classifier needs; refused")


# --- input, output and preprocessing -------------------------------------------------------------
def read_preprocess(text: str, name: str) -> Preprocess:
    """The preprocessing metadata, every field checked before an image is decoded for it."""
    try:
        fields = json.loads(text)
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        pre = Preprocess(**fields)
    except Exception:
        raise OnnxFileError(f"{name} has unreadable preprocessing metadata (corrupt)") from None
    for key, value, low, high in (("crop", pre.crop, 1, MAX_CROP), ("resize", pre.resize, pre.crop, MAX_RESIZE)):
        if type(value) is not int or not low <= value <= high:
            raise OnnxFileError(f"{name}'s preprocessing asks for {key} {untrusted_text(value, 20)}; MixQuant "
                                f"decodes images for a {key} of {low} to {high} pixels only")
    for key in ("mean", "std"):
        values = getattr(pre, key)
        if not (isinstance(values, tuple) and len(values) == 3 and all(type(v) in (int, float) and math.isfinite(v)
                                                                         and (key == "mean" or v > 0) for v in values)):
            raise OnnxFileError(f"{name}'s preprocessing has an invalid {key} ({untrusted_text(values, 60)})")
    if pre.interpolation not in INTERPOLATIONS:
        raise OnnxFileError(f"{name}'s preprocessing names an unknown interpolation "
                            f"'{untrusted_text(pre.interpolation, 40)}'")
    return pre


def check_input(graph, preprocess: Preprocess, name: str) -> str:
    """One float32 input [batch, 3, crop, crop] matching the preprocessing; returns the batch
    dim's name (its symbolic size, counted as one image by ``check_shapes``)."""
    import onnx

    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise OnnxFileError(f"{name} has {len(inputs)} inputs; a MixQuant export takes one image batch")
    dims = _dims(inputs[0])
    want = [3, preprocess.crop, preprocess.crop]
    if (inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT or dims is None or len(dims) != 4
            or not isinstance(dims[0], str) or dims[1:] != want):
        raise OnnxFileError(f"{name}'s graph takes input {shown_dims(dims)}, its preprocessing makes images "
                            f"[batch, {', '.join(map(str, want))}]: they must agree (corrupt or edited)")
    return dims[0]


def check_output(graph, batch: str, name: str) -> int:
    """The one output is float32 logits [batch, classes]; returns the class count."""
    import onnx

    if len(graph.output) != 1:
        raise OnnxFileError(f"{name}'s graph has {len(graph.output)} outputs; a MixQuant export has one, the logits")
    dims = _dims(graph.output[0])
    if (graph.output[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT or dims is None or len(dims) != 2
            or dims[0] != batch or not isinstance(dims[1], int) or not 1 <= dims[1] <= MAX_CLASSES):
        raise OnnxFileError(f"{name}'s graph gives {shown_dims(dims)}, not float32 logits [batch, classes]")
    return dims[1]
