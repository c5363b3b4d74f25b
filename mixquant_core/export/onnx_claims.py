"""An ONNX export's metadata, checked against its own graph before anything in it is shown or used.

The metadata says which layers hold codes of how many bits, with which scheme, how large the plan
is and which model it was made from. The graph holds the codes themselves: their DequantizeLinear
nodes, integer types, shapes and values. As the packed format's checksum and field checks do for
.safetensors exports (packed.py), every claim is checked against what the graph holds and the first
disagreement refuses the file; the facts shown (layers, average bits, quantized weights) are
computed from the graph, never read from the metadata. A claimed registry model is built (its
architecture, no weights) and must have every planned layer and every other tensor of the graph,
with the same shapes; any other model name is shown as an unverified, escaped name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
from torch import nn

from ..errors import MixQuantError
from ..models.layers import CONV_KINDS, MATRIX_KINDS, LayerInfo, key_for_name, name_for_key
from ..models.preprocess import Preprocess
from ..plans.plan import Plan
from ..plans.size import FLOAT_BYTES, MB, float32_bytes, quantized_layer_bytes
from ..quant.quantizers import QUANTIZERS, is_per_channel, is_symmetric
from .onnx_fuse import FOLDED_BIAS
from .onnx_pack import SHARED, read_packed_layers
from ..models.onnx_qdq import ACT_SCALE, ACT_ZERO_POINT, OUT_SCALE, OUT_ZERO_POINT, node_producers
from .onnx_qdq import is_act_dequantize
from .untrusted import OnnxFileError, shown_dims, untrusted_text

SUFFIXES = ("_codes", "_scale", "_zero_point")  # of NAME.weight: what build_onnx stores per layer


def container_bits(nbits: int) -> int:
    """Bits one code occupies in the ONNX file: 2, 4 or 8."""
    return 2 if nbits <= 2 else 4 if nbits <= 4 else 8


def _code_types() -> Dict[int, Tuple[int, bool]]:
    from onnx import TensorProto as T

    return {T.UINT2: (2, False), T.INT2: (2, True), T.UINT4: (4, False), T.INT4: (4, True),
            T.UINT8: (8, False), T.INT8: (8, True)}


@dataclass(frozen=True)
class GraphLayer:
    """One quantized layer as the graph stores it: bit-packed codes (onnx_pack.py), or codes in a
    2/4/8-bit integer type behind a DequantizeLinear."""
    name: str
    shape: Tuple[int, ...]  # the weight's, i.e. its codes'
    container: int  # bits one code occupies
    signed: bool
    scale_shape: Tuple[int, ...]
    tensors: Tuple[str, ...] = ()  # the initializers that hold it
    packed: bool = False

    @property
    def params(self) -> int:
        return math.prod(self.shape)  # Python ints: a hostile shape cannot overflow


@dataclass(frozen=True)
class GraphFacts:
    """What the graph itself says about the plan."""
    layers: Dict[str, GraphLayer]  # in plan order
    avg_bits: float
    quantized_params: int
    float_bytes: int  # the float32 tensors the graph holds, quantized weights counted at 4 bytes


# --- the graph's quantized layers --------------------------------------------------------------
def quantized_layers(graph, name: str) -> Dict[str, GraphLayer]:
    """Every packed weight (onnx_pack.py) and every DequantizeLinear of weight codes, which must be
    a layer's stored codes as build_onnx writes them (activation Q/DQ pairs: onnx_qdq.py)."""
    inits = {i.name: i for i in graph.initializer}
    producers = node_producers(graph)
    layers: Dict[str, GraphLayer] = {}
    for key, p in read_packed_layers(graph, name).items():
        layer = name_for_key(key) or ""
        if not layer or key in inits:  # made by its unpacking's last node: read_packed_layers matched it
            raise OnnxFileError(f"{name}: the packed weight '{untrusted_text(key)}' is not a layer's weight (corrupt or edited)")
        layers[layer] = GraphLayer(layer, p.shape, p.nbits, False, p.scale_shape, tuple(p.tensors()), True)
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or is_act_dequantize(node, producers):
            continue
        out = node.output[0] if len(node.output) == 1 else ""
        layer = name_for_key(out) or ""
        if not layer or list(node.input) != [out + s for s in SUFFIXES] or not all(i in inits for i in node.input):
            raise OnnxFileError(f"{name}: DequantizeLinear node '{untrusted_text(node.name or out, 60)}' does not dequantize "
                                "a layer's stored codes, scale and zero-point (corrupt or edited)")
        if layer in layers or out in inits:
            raise OnnxFileError(f"{name}: layer '{untrusted_text(layer)}' is stored twice (corrupt or edited)")
        layers[layer] = _graph_layer(layer, node, *(inits[i] for i in node.input), name=name)
    return layers


def stored_tensors(layers: Dict[str, GraphLayer], graph) -> set:
    """Initializers that are a quantized layer's storage, unpacking constants or activation
    quantization parameters (not state tensors of the model)."""
    names = {t for g in layers.values() for t in g.tensors}
    names |= set(SHARED)
    names |= {i.name for i in graph.initializer if i.name.endswith((ACT_SCALE, ACT_ZERO_POINT, OUT_SCALE, OUT_ZERO_POINT))}
    names |= {key_for_name(n) + FOLDED_BIAS for n, g in layers.items() if not g.packed}
    return names


def _graph_layer(layer: str, node, codes, scale, zero_point, name: str) -> GraphLayer:
    from onnx import TensorProto

    kinds = _code_types()
    shown = untrusted_text(layer)
    if codes.data_type not in kinds or zero_point.data_type != codes.data_type:
        raise OnnxFileError(f"{name}: layer '{shown}' stores codes of ONNX type {codes.data_type} with a zero-point of "
                            f"type {zero_point.data_type}; MixQuant writes 2/4/8-bit integers of one type")
    if scale.data_type != TensorProto.FLOAT:
        raise OnnxFileError(f"{name}: layer '{shown}' has a scale of ONNX type {scale.data_type}, not float32")
    axis = [a.i for a in node.attribute if a.name == "axis"]
    if axis not in ([], [0]) or tuple(zero_point.dims) != tuple(scale.dims):
        raise OnnxFileError(f"{name}: layer '{shown}' has a scale, zero-point or axis MixQuant does not write")
    container, signed = kinds[codes.data_type]
    return GraphLayer(layer, tuple(int(d) for d in codes.dims), container, signed, tuple(int(d) for d in scale.dims),
                      tuple(node.input))


# --- the plan and the scheme against the graph -------------------------------------------------
def checked_scheme(text: str, name: str) -> str:
    if text not in QUANTIZERS:
        raise OnnxFileError(f"{name} names an unknown quantization scheme '{untrusted_text(text, 40)}' "
                            "(corrupt, edited or from a newer version)")
    return text


def check_plan_layers(plan: Plan, scheme: str, layers: Dict[str, GraphLayer], graph, name: str) -> None:
    """The plan's layers are the graph's, each stored as its bit-width and the scheme store it."""
    extra = [layer for layer in layers if layer not in plan.layers]
    if extra:
        raise OnnxFileError(f"{name}: the graph holds codes for layer '{untrusted_text(extra[0])}', which its plan "
                            f"does not list ({len(layers)} quantized layers in the graph, {len(plan.layers)} in the plan)")
    inits = {i.name: i for i in graph.initializer}
    for layer, entry in plan.layers.items():
        shown = untrusted_text(layer)
        g = layers.get(layer)
        if g is None:
            raise OnnxFileError(f"{name}: its plan lists layer '{shown}', which has no codes in the graph "
                                f"({len(plan.layers)} layers in the plan, {len(layers)} in the graph)")
        bits = int(entry["bits"])
        if g.container != bits if g.packed else g.container not in (container_bits(bits), 8):
            raise OnnxFileError(f"{name}: layer '{shown}' is {bits} bits in the plan, its codes are {g.container}-bit "
                                "integers in the graph")
        if not g.packed and g.signed and not is_symmetric(scheme):  # symmetric: signed, or unsigned around 2^(b-1)
            raise OnnxFileError(f"{name}: layer '{shown}' stores signed codes, the '{scheme}' scheme stores unsigned ones")
        groups = g.shape[0] if is_per_channel(scheme) and g.shape and g.shape[0] > 1 else None
        want = ((groups,) + (1,) * (len(g.shape) - 1) if g.packed else (groups,)) if groups else ()
        folded = not g.packed and g.scale_shape == (g.shape[0],)  # a BatchNorm folded into per-channel scales
        if g.scale_shape != want and not folded:
            raise OnnxFileError(f"{name}: layer '{shown}' has scales of shape {shown_dims(g.scale_shape)}, which the "
                                f"'{scheme}' scheme does not make for a weight of shape {shown_dims(g.shape)}")
        if entry.get("params") is not None and entry["params"] != g.params:
            raise OnnxFileError(f"{name}: layer '{shown}' has {g.params} weights in the graph, {entry['params']} in the plan")
        kind = entry.get("kind")
        if (kind in MATRIX_KINDS and len(g.shape) != 2) or (kind in CONV_KINDS and len(g.shape) == 2):
            raise OnnxFileError(f"{name}: layer '{shown}' is '{untrusted_text(entry['kind'], 20)}' in the plan, its "
                                f"weight has shape {shown_dims(g.shape)} in the graph")
        key = key_for_name(layer)
        if g.packed:
            _check_packed_zero_point(inits[key + "_zero_point"], g, bits, is_symmetric(scheme), shown, name)
        else:
            _check_codes_fit(inits[key + "_codes"], inits[key + "_zero_point"], bits, g.signed, shown, name,
                             is_symmetric(scheme))


def _check_packed_zero_point(zero_point, g: GraphLayer, bits: int, symmetric: bool, shown: str, name: str) -> None:
    """Packed codes hold ``bits`` bits by construction; their zero-point must be on the grid too:
    2^(b-1) (one) for symmetric schemes, 0 .. 2^b - 1 (one per scale) for affine ones."""
    from onnx import numpy_helper

    zp = numpy_helper.to_array(zero_point).astype(np.int16)
    if symmetric:
        ok = zp.shape == () and int(zp) == 2 ** (bits - 1)
    else:
        ok = tuple(zp.shape) == g.scale_shape and (zp.size == 0 or int(zp.max()) <= 2**bits - 1)
    if not ok:
        raise OnnxFileError(f"{name}: layer '{shown}' has a zero-point off its {bits}-bit "
                            f"{'symmetric' if symmetric else 'affine'} grid (corrupt or edited)")


def _check_codes_fit(codes, zero_point, bits: int, signed: bool, shown: str, name: str, symmetric: bool = False) -> None:
    """Every code lies on the plan's ``bits``-bit grid (a 5-bit layer stored in bytes uses 0..31),
    and a symmetric scheme's zero-point is its grid's: 0 for signed codes, 2^(b-1) for unsigned."""
    from onnx import numpy_helper

    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    try:
        values = numpy_helper.to_array(codes).astype(np.int16)
        zp = numpy_helper.to_array(zero_point).astype(np.int16)
    except Exception:
        raise OnnxFileError(f"{name}: layer '{shown}' has unreadable codes (corrupt)") from None
    if values.size and (int(values.min()) < low or int(values.max()) > high):
        raise OnnxFileError(f"{name}: layer '{shown}' is {bits} bits in the plan, but its codes span "
                            f"{int(values.min())}..{int(values.max())} (corrupt or edited)")
    if signed and zp.any():
        raise OnnxFileError(f"{name}: layer '{shown}' has signed (symmetric) codes with a non-zero zero-point")
    if symmetric and not signed and (zp != 2 ** (bits - 1)).any():
        raise OnnxFileError(f"{name}: layer '{shown}' has symmetric codes with a zero-point other than {2 ** (bits - 1)}")


def graph_facts(plan: Plan, layers: Dict[str, GraphLayer], graph) -> GraphFacts:
    from onnx import TensorProto

    ordered = {layer: layers[layer] for layer in plan.layers}
    params = sum(g.params for g in ordered.values())
    avg = sum(g.params * int(plan.layers[n]["bits"]) for n, g in ordered.items()) / params if params else 0.0
    stored = stored_tensors(layers, graph)
    floats = sum(math.prod(i.dims) for i in graph.initializer
                 if i.data_type == TensorProto.FLOAT and i.name not in stored)
    return GraphFacts(ordered, float(avg), int(params), FLOAT_BYTES * (floats + params))


# --- the plan's size claims ----------------------------------------------------------------------
def _claimed(plan: Plan, key: str, name: str) -> Optional[float]:
    if key not in plan.size:
        return None
    value = plan.size[key]
    if type(value) not in (int, float) or not math.isfinite(value):
        raise OnnxFileError(f"{name}'s plan has a size {key} that is not a finite number")
    return float(value)


def check_size_claims(plan: Plan, facts: GraphFacts, name: str, model_float_bytes: Optional[int] = None) -> None:
    """plan.size against the graph: average bits and quantized weights exactly, plan_mb from the
    float32 size, and the float32 size at least what the graph holds (exactly the model's, when
    the model is known)."""
    def refuse(key, value, expected):
        raise OnnxFileError(f"{name}'s plan says {key} {untrusted_text(value, 20)}, its graph gives {expected:.6g} "
                            "(corrupt or edited)")

    avg, params = _claimed(plan, "avg_bits", name), _claimed(plan, "quantized_params", name)
    if avg is not None and not math.isclose(avg, facts.avg_bits, rel_tol=1e-6, abs_tol=1e-9):
        refuse("avg_bits", avg, facts.avg_bits)
    if params is not None and params != facts.quantized_params:
        refuse("quantized_params", params, facts.quantized_params)
    float_mb, plan_mb = _claimed(plan, "float32_mb", name), _claimed(plan, "plan_mb", name)
    if float_mb is None:
        return
    if model_float_bytes is not None and not math.isclose(float_mb, model_float_bytes / MB, rel_tol=1e-9):
        refuse("float32_mb", float_mb, model_float_bytes / MB)
    if float_mb * MB < facts.float_bytes - 0.5:  # the model holds at least the graph's tensors
        refuse("float32_mb", float_mb, facts.float_bytes / MB)
    if plan_mb is not None:
        layers = [LayerInfo(g.name, "fc" if len(g.shape) == 2 else "conv", g.params, g.shape) for g in facts.layers.values()]
        quant = sum(quantized_layer_bytes(layer, plan.layers[layer.name]["bits"], plan.quantizer) for layer in layers)
        expected = float_mb + (quant - FLOAT_BYTES * facts.quantized_params) / MB
        if not math.isclose(plan_mb, expected, rel_tol=1e-9, abs_tol=0.5 / MB):
            refuse("plan_mb", plan_mb, expected)


# --- the model it was made from ------------------------------------------------------------------
def check_against_model(plan: Plan, layers: Dict[str, GraphLayer], graph, model: nn.Module, label: str) -> None:
    """Every planned layer is one of ``model``'s with its shape, and every other tensor of the
    graph is one of its state entries with its shape."""
    try:
        plan.check_against(model)
    except MixQuantError as exc:
        raise OnnxFileError(f"ONNX file does not fit {label}: {untrusted_text(exc, 300)}") from None
    state = model.state_dict()
    for layer, g in layers.items():
        here = tuple(state[key_for_name(layer)].shape)
        if g.shape != here:
            raise OnnxFileError(f"ONNX file is for another model, not {label}: '{untrusted_text(key_for_name(layer))}' "
                                f"has shape {shown_dims(g.shape)} there, {shown_dims(here)} in {label}")
    stored = stored_tensors(layers, graph)
    for init in graph.initializer:
        if init.name in stored:
            continue
        if init.name not in state:
            raise OnnxFileError(f"ONNX file is for another model, not {label}: its tensor "
                                f"'{untrusted_text(init.name)}' is not one of {label}'s")
        if tuple(init.dims) != tuple(state[init.name].shape):
            raise OnnxFileError(f"ONNX file is for another model, not {label}: '{untrusted_text(init.name)}' "
                                f"has shape {shown_dims(init.dims)} there, {shown_dims(state[init.name].shape)} in {label}")


def claimed_registry_name(plan: Plan) -> Optional[str]:
    """The registry model the plan names, when it names one exactly: a built-in or torchvision
    name the registry lists, or a timm architecture (never a path, never a name that makes timm
    fetch a configuration, such as "hf-hub:..."). A timm model's plan records its bare name
    ("resnet18" of source "timm"): it is built as "timm/resnet18"."""
    from ..models.registry import list_models, timm_available

    name, source = plan.model.get("name"), plan.model.get("source")
    if source == "file" or not isinstance(name, str) or not name:
        return None
    if source == "timm" or name.startswith("timm/"):
        bare = name.removeprefix("timm/")
        if not timm_available() or ":" in bare or "/" in bare:
            return None
        import timm

        return "timm/" + bare if timm.is_model(bare) else None
    return name if any(entry.name == name for entry in list_models() if entry.source != "timm") else None


def verify_registry_claim(plan: Plan, preprocess: Preprocess, facts: GraphFacts, graph, name: str) -> Optional[str]:
    """The registry name the file claims, checked against that architecture (no weights are
    downloaded), or None when it claims no registry model or the architecture cannot be built."""
    from ..models.registry import build_model

    claimed = claimed_registry_name(plan)
    if claimed is None:
        return None
    try:
        loaded = build_model(claimed, pretrained=False)
    except MixQuantError:
        return None
    if plan.model.get("source") != loaded.source:
        raise OnnxFileError(f"{name} says {claimed} is a '{untrusted_text(plan.model.get('source'), 20)}' model; the "
                            f"registry's is {loaded.source} (corrupt or edited)")
    check_against_model(plan, facts.layers, graph, loaded.model, claimed)
    if preprocess != loaded.preprocess:
        raise OnnxFileError(f"{name}'s preprocessing is not {claimed}'s (crop {preprocess.crop} resize {preprocess.resize}, "
                            f"{claimed}: crop {loaded.preprocess.crop} resize {loaded.preprocess.resize}; or its "
                            "normalisation differs)")
    check_size_claims(plan, facts, name, float32_bytes(loaded.model))
    return claimed
