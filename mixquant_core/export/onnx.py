"""A plan as a runnable ONNX model, read by ONNX Runtime and OpenVINO.

Each planned layer's weight initializer ``NAME.weight`` is replaced by its codes:

* bit-packed at the layer's bit-width and unpacked by standard ops that both runtimes evaluate
  once when they build the session (onnx_pack.py): the weights equal the fake-quantized ones bit
  for bit, the file is the size accounting plus the graph, and it runs at float32 speed;
* for a layer whose inputs the plan's recipe quantizes and whose output ONNX Runtime can requantize
  (onnx_fuse.py): int8/uint8 codes (the integer kernels' container; symmetric codes in int8 only
  where no CPU's kernel can saturate on them, ``saturation_free``), per-output-channel scales with
  the following BatchNorm folded in, and a DequantizeLinear, so ORT fuses it into QLinearConv.

Activation quantization is a Q/DQ pair on each such layer's input, before the zero Pads leading to
it (models/onnx_qdq.py). Everything
else stays float32. metadata_props holds the plan JSON (with its recipe), the scheme, the
preprocessing and the model's identity, so ``mixquant load`` can evaluate the file on its own.
A last pass gives intermediate values short names and drops node names (onnx_compact.py): the file
is the size accounting plus ~0.09 MB on Lite0; readers find everything by initializer names and structure.
Files of earlier versions (codes in 2/4/8-bit types behind DequantizeLinear) still load.

The file is untrusted input when read back: ``read_onnx`` parses it with onnx only, bounds the graph
(onnx_checks.py: an allow-list of operators, shapes known and bounded, the input the preprocessing
makes) and checks its metadata against the graph and the model it claims (onnx_claims.py; packed
layers against their own template, activation quantizers against the plan's ranges, onnx_qdq.py);
ONNX Runtime then runs it on the CPU in a child process with a time and memory limit (onnx_isolated.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import MixQuantError, first_line
from ..models.act_points import point_tensors
from ..models.layers import state_key
from ..models.onnx_graph import float_graph, set_initializers, state_initializers
from ..models.onnx_qdq import insert_act_qdq
from ..models.preprocess import Preprocess
from ..plans.plan import PLAN_VERSION, Plan, recipe_for_plan
from ..quant.activations import ActQuant, act_qparams_table
from ..quant.codes import QuantizedLayer
from ..quant.quantizers import is_symmetric
from ..quant.recipe import Recipe, acts_of
from .onnx_checks import check_input, check_ops, check_output, check_self_contained, check_shapes, read_preprocess
from .onnx_claims import (GraphFacts, check_against_model, check_plan_layers, check_size_claims, checked_scheme,
                          container_bits, graph_facts, quantized_layers, verify_registry_claim)
from .onnx_compact import compact_graph
from .onnx_fuse import drop_idle_activations, fold_batchnorm, integer_layers
from .onnx_pack import packed_layer, shared_constants
from .onnx_qdq import checked_acts
from .untrusted import OnnxFileError, untrusted_text

ONNX_FORMAT = "mixquant-onnx"
EXPORT_OPSET = 25  # int2/uint2 DequantizeLinear inputs need opset 25
# How an integer layer stores 8-bit symmetric codes (``saturation_free``): "exact" computes the plan's
# numbers on every CPU, "signed" runs fastest (u8 x s8 kernels) but can saturate on CPUs without VNNI
INT8_WEIGHTS = ("exact", "signed")
_MAX_BYTES = 2 * 1024**3  # protobuf's limit; a bigger "ONNX file" is not one we wrote
Progress = Optional[Callable[[int, int, str], None]]


def saturation_free(signed_codes: torch.Tensor) -> bool:
    """True when int8 weight codes cannot saturate the u8 x s8 kernels of a CPU without VNNI.

    There (AVX2; ONNX Runtime's MLAS and OpenVINO alike) VPMADDUBSW adds the products of two
    neighbouring weights of one output channel with two uint8 activations in 16 bits, which clamp
    at 32767: exact for any activations when 255 * (|w1| + |w2|) <= 32767, i.e. when the two
    largest |codes| of every output channel add up to at most 128. Measured on Lite0 (400
    images): per-channel symmetric int8 codes, each channel reaching 127, gave 78.75 % in ORT and
    77.25 % in OpenVINO against 81.5 % fake-quantized; the same codes as uint8 around 128 (ORT's
    U8U8 kernels, no 16-bit step) 81.75 / 81.5 %. Codes of 7 bits or fewer always pass."""
    rows = signed_codes.reshape(signed_codes.shape[0], -1).abs() if signed_codes.dim() > 1 else signed_codes.abs()[None]
    top = rows.topk(min(2, rows.shape[1]), dim=1).values.sum(dim=1)
    return bool((top <= 128).all())


def _dequantized_layer(key: str, q: QuantizedLayer, int8_weights: str = "exact"):
    """(codes, scale, zero_point) TensorProtos and the DequantizeLinear node of one layer whose
    inputs are quantized too: codes in int8/uint8 (the container ONNX Runtime's integer kernels
    take), per tensor or per output channel, feeding ``key`` (its state_dict key)."""
    from onnx import helper, numpy_helper

    codes = q.codes.to(torch.int16)
    zero_point = q.zero_point.round().to(torch.int16)
    # symmetric codes are stored unsigned with the zero-point 2^(b-1) (quant.codes.unsigned_grid):
    # int8 around 0 where no x86 kernel can saturate on them, else as they are (uint8, ORT's U8U8)
    signed = is_symmetric(q.scheme) and (int8_weights == "signed" or saturation_free(codes - zero_point))
    if signed:
        codes, zero_point = codes - zero_point, torch.zeros_like(zero_point)
    per_channel = q.scale.numel() > 1
    scale = q.scale.float().reshape(-1) if per_channel else q.scale.float().reshape(())
    zero_point = zero_point.reshape(-1) if per_channel else zero_point.reshape(())
    dtype = np.int8 if signed else np.uint8
    base = key
    inits = [numpy_helper.from_array(codes.numpy().astype(dtype), base + "_codes"),
             numpy_helper.from_array(scale.numpy(), base + "_scale"),
             numpy_helper.from_array(zero_point.numpy().astype(dtype), base + "_zero_point")]
    node = helper.make_node("DequantizeLinear", [i.name for i in inits], [base], name=base + "_dequantize",
                            **({"axis": 0} if per_channel else {}))
    return inits, [node]


def _check_layers(model: nn.Module, plan: Plan, layers: Dict[str, QuantizedLayer], acts: Optional[ActQuant]) -> None:
    plan.check_against(model)
    if list(layers) != list(plan.layers):
        raise MixQuantError("the quantized layers do not match the plan's layers")
    for name, q in layers.items():
        if q.nbits != plan.bits[name]:
            raise MixQuantError(f"layer '{name}' is quantized to {q.nbits} bits, the plan says {plan.bits[name]}")
    if acts is not None:
        outside = [name for name in acts.ranges if name not in layers]
        if outside:
            raise MixQuantError(f"activation ranges name layer '{outside[0]}', which the plan does not quantize")
        if acts.bits != 8:
            raise MixQuantError(f"ONNX export quantizes activations to 8 bits (uint8), not {acts.bits}")


def _integer_layers(graph, keys: Dict[str, str], layers: Dict[str, QuantizedLayer], points=()) -> Dict[str, QuantizedLayer]:
    """The layers ONNX Runtime can run as integer kernels (onnx_fuse.py), their BatchNorms folded
    into their scales (``graph`` changed): name -> the codes to store behind a DequantizeLinear."""
    out = {}
    found = integer_layers(graph, keys, set(keys.values()), set(points))
    for name, bn in sorted(found.items(), key=lambda item: -1 if item[1] is None else -item[1]):
        q = layers[name] if bn is None else fold_batchnorm(graph, keys[name], bn, layers[name], is_symmetric(layers[name].scheme))
        if q is not None:
            out[name] = q
    return out


def build_onnx(model: nn.Module, plan: Plan, layers: Dict[str, QuantizedLayer], preprocess: Preprocess,
               progress: Progress = None, int8_weights: str = "exact"):
    """The ONNX ModelProto of ``model`` with ``layers`` as integer codes (``plan`` in its metadata):
    bit-packed and unpacked at session build (onnx_pack.py), or, for the layers whose inputs the
    plan's recipe quantizes, int8/uint8 codes behind DequantizeLinear with Q/DQ on the input (onnx_qdq.py).
    ``int8_weights`` (INT8_WEIGHTS): "exact" stores symmetric codes as int8 only where no kernel can
    saturate on them (``saturation_free``), "signed" always, as quantize_static does."""
    if int8_weights not in INT8_WEIGHTS:
        raise MixQuantError(f"int8 weights must be one of {', '.join(INT8_WEIGHTS)}, not {int8_weights!r}")
    import onnx
    from onnx import helper

    acts = acts_of(plan.recipe)
    _check_layers(model, plan, layers, acts)
    total = len(layers) + 2
    if progress:
        progress(0, total, "tracing the model")
    proto = float_graph(model, (3, preprocess.crop, preprocess.crop))
    set_initializers(proto, state_initializers(model, proto))  # the model's current floats
    graph = proto.graph
    keys = {name: state_key(model, name) for name in layers}
    planned = set(keys.values())
    with_acts = set(acts.ranges) if acts is not None else set()
    # output points found on the traced graph's module scopes, before the edits below drop nodes
    points = point_tensors(graph, {n for n, _ in model.named_modules() if n}, acts) if acts is not None else {}
    integer = _integer_layers(graph, {n: keys[n] for n in with_acts}, layers, points)
    layers = {**layers, **integer}
    kept = [init for init in graph.initializer if init.name not in planned]
    new_inits, nodes = [], []
    if len(integer) < len(layers):
        new_inits += shared_constants()
    for k, (name, q) in enumerate(layers.items()):
        if name in integer:
            inits, layer_nodes = _dequantized_layer(keys[name], q, int8_weights)
        else:
            inits, layer_nodes = packed_layer(keys[name], q, is_symmetric(q.scheme))
        new_inits += inits
        nodes += layer_nodes
        if progress:
            progress(k + 1, total, name)
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    old_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old_nodes)  # weights first: the graph stays topologically sorted
    if acts is not None:
        insert_act_qdq(graph, {name: keys[name] for name in acts.ranges}, act_qparams_table(acts), points)
        drop_idle_activations(graph)  # a ReLU6 after an output point whose grid it cannot change
    used = {i for node in graph.node for i in node.input}
    unused = [init.name for init in graph.initializer if init.name not in used]  # folded BatchNorms
    for name in unused:
        graph.initializer.remove(next(i for i in graph.initializer if i.name == name))
    compact_graph(graph, keep=planned)  # short intermediate names, no node names: the file is its codes plus little
    del proto.opset_import[:]
    proto.opset_import.extend([helper.make_opsetid("", EXPORT_OPSET)])
    proto.ir_version = helper.find_min_ir_version_for(list(proto.opset_import))
    proto.producer_name, proto.producer_version = "mixquant-studio", "2"
    meta = {"mixquant_format": ONNX_FORMAT, "mixquant_plan": plan.to_json(indent=None),
            "mixquant_scheme": next(iter(layers.values())).scheme if layers else plan.quantizer,
            "mixquant_preprocess": json.dumps(preprocess.to_dict())}
    helper.set_model_props(proto, meta)
    if progress:
        progress(total - 1, total, "checking")
    onnx.checker.check_model(proto)
    if progress:
        progress(total, total, "done")
    return proto


def onnx_bytes(model: nn.Module, plan: Plan, preprocess: Preprocess, reconstructed=None, progress: Progress = None,
               recipe: Optional[Recipe] = None, int8_weights: str = "exact") -> bytes:
    """The ONNX file for ``plan``: round-to-nearest codes on the plan's recipe (its calibrated
    weight ranges, so the file computes what the evaluation measured; its activation quantization
    as Q/DQ), or a ReconResult's learned codes. ``recipe`` replaces the plan's own."""
    from .packed import rtn_layers

    if recipe is not None:
        if recipe.quantizer != plan.quantizer:
            raise MixQuantError(f"the recipe quantizes with '{recipe.quantizer}', the plan with '{plan.quantizer}'")
        plan = dataclasses.replace(plan, version=PLAN_VERSION, recipe_data=recipe_for_plan(recipe, plan.bits))
        plan.check_recipe()
    layers = rtn_layers(model, plan) if reconstructed is None else reconstructed.layers
    return build_onnx(model, plan, layers, preprocess, progress, int8_weights).SerializeToString()


# --- reading (untrusted) ---------------------------------------------------------------------
@dataclass
class OnnxFile:
    """A MixQuant ONNX export whose every claim was checked against its graph (read_onnx)."""
    proto: object  # onnx.ModelProto
    plan: Plan
    scheme: str  # one of QUANTIZERS, and the one its codes are stored with
    preprocess: Preprocess  # bounded, and the graph's input size
    data: bytes
    facts: GraphFacts  # layers, average bits, quantized weights: from the graph, never the metadata
    acts: Optional[ActQuant] = None  # activation quantization, checked against the graph's Q/DQ pairs
    model_name: Optional[str] = None  # the registry model it was checked against (None: unverified)
    shown_as: str = "ONNX data"  # the file, as error messages name it

    @property
    def avg_bits(self) -> float:
        return self.facts.avg_bits

    @property
    def model_label(self) -> str:
        """The model it is for: a checked registry name, or the file's claim marked unverified."""
        if self.model_name:
            return self.model_name
        return f"unverified model name '{untrusted_text(self.plan.model.get('name', ''))}'"

    def summary(self) -> Dict[str, object]:
        """What ``mixquant load`` shows: every value checked or computed from the graph."""
        return {"model": self.model_name or untrusted_text(self.plan.model.get("name", "")),
                "model_verified": self.model_name is not None, "layers": len(self.facts.layers),
                "scheme": self.scheme, "avg_bits": self.facts.avg_bits,
                "quantized_params": self.facts.quantized_params, "bytes": len(self.data)}

    def expect_model(self, wanted: str) -> None:
        """An OnnxFileError unless the file was made for the model named ``wanted`` (the user's name)."""
        if wanted not in (self.plan.model.get("name", ""), self.model_name):
            raise OnnxFileError(f"{self.shown_as} is an ONNX export of {self.model_label}, not of {wanted}")

    def session(self, threads: Optional[int] = None):
        """An ONNX Runtime session in this process: for files this process has just built. An
        untrusted file runs through ``isolated_session`` (a child with limits)."""
        from ..evaluation.engines.onnxruntime_engine import new_session

        try:
            return new_session(self.data, threads)
        except Exception as exc:
            raise OnnxFileError(f"ONNX Runtime cannot run this file: {untrusted_text(first_line(exc), 160)}") from None


def _file_bytes(path_or_bytes) -> Tuple[bytes, str]:
    if isinstance(path_or_bytes, (bytes, bytearray)):
        return bytes(path_or_bytes), "ONNX data"
    name = f"'{os.fspath(path_or_bytes)}'"
    if not os.path.isfile(path_or_bytes):
        raise OnnxFileError(f"ONNX file {name} does not exist")
    if os.path.getsize(path_or_bytes) > _MAX_BYTES:
        raise OnnxFileError(f"{name} is larger than any ONNX file MixQuant writes")
    with open(path_or_bytes, "rb") as fh:
        return fh.read(), name


def _parsed(data: bytes, name: str):
    """The ModelProto and its MixQuant metadata; no operator is looked at yet."""
    import onnx

    try:
        proto = onnx.load_model_from_string(data)  # never follows external-data paths
    except Exception as exc:
        raise OnnxFileError(f"{name} is not a readable ONNX file (corrupt or truncated): {untrusted_text(first_line(exc), 120)}") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("mixquant_format") != ONNX_FORMAT:
        raise OnnxFileError(f"{name} is not a MixQuant ONNX export (no plan in its metadata; corrupt, truncated or another tool's file)")
    return proto, meta


def _checked_graph(proto, preprocess: Preprocess, name: str) -> None:
    """The bounds of onnx_checks.py, cheapest first: what ONNX Runtime would be asked to run."""
    import onnx

    check_self_contained(proto, name)
    check_ops(proto.graph, name)
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise OnnxFileError(f"{name} is not a valid ONNX model (corrupt): {untrusted_text(first_line(exc), 120)}") from None
    batch = check_input(proto.graph, preprocess, name)
    check_output(proto.graph, batch, name)
    check_shapes(proto, batch, name)


def _plan(meta: Dict[str, str], name: str) -> Plan:
    try:
        return Plan.from_json(meta.get("mixquant_plan", ""))
    except MixQuantError as exc:
        raise OnnxFileError(f"{name} holds an invalid plan: {untrusted_text(exc, 300)}") from None


def read_onnx(path_or_bytes, model: Optional[nn.Module] = None) -> OnnxFile:
    """Parse and check a MixQuant ONNX export: bounded graph, metadata that agrees with it, and
    the model it claims (``model``, or the registry model it names); the first problem is an
    OnnxFileError of one line."""
    data, name = _file_bytes(path_or_bytes)
    proto, meta = _parsed(data, name)
    preprocess = read_preprocess(meta.get("mixquant_preprocess", ""), name)
    _checked_graph(proto, preprocess, name)
    plan = _plan(meta, name)
    scheme = checked_scheme(meta.get("mixquant_scheme", ""), name)
    layers = quantized_layers(proto.graph, name)
    check_plan_layers(plan, scheme, layers, proto.graph, name)
    facts = graph_facts(plan, layers, proto.graph)
    check_size_claims(plan, facts, name)
    acts = checked_acts(acts_of(plan.recipe), proto.graph, name)
    out = OnnxFile(proto, plan, scheme, preprocess, data, facts, acts, shown_as=name)
    if model is not None:
        check_onnx_against(out, model)
    else:
        out.model_name = verify_registry_claim(plan, preprocess, facts, proto.graph, name)
    return out


def check_onnx_against(f: OnnxFile, model: nn.Module) -> None:
    """An OnnxFileError unless ``f`` was exported from ``model``'s architecture (names, shapes, sizes)."""
    from ..plans.size import float32_bytes

    check_against_model(f.plan, f.facts.layers, f.proto.graph, model, "this model")
    check_size_claims(f.plan, f.facts, f.shown_as, float32_bytes(model))


def onnx_size_report(data: bytes, model: nn.Module, plan: Plan, scheme: str) -> Dict[str, object]:
    """File size against the size accounting (plans/size.py), and what code containers add: none
    for bit-packed layers; the layers whose inputs are quantized store their codes in bytes, the
    container ONNX Runtime's integer kernels (QLinearConv, MatMulInteger) take."""
    import onnx
    from onnx import numpy_helper

    from .packed import accounted_bytes

    plan.check_against(model)
    graph = onnx.load_model_from_string(data).graph
    stored = quantized_layers(graph, "ONNX data")
    padding = sum((g.container - plan.bits[n]) * g.params for n, g in stored.items()) // 8
    accounted = accounted_bytes(model, plan, scheme)
    inits = {i.name: i for i in graph.initializer}
    integer = [g for g in stored.values() if not g.packed]
    # int8 codes past saturation_free's bound: u8 x s8 kernels of CPUs without VNNI can saturate on them
    saturable = sum(g.signed and not saturation_free(torch.from_numpy(numpy_helper.to_array(inits[g.tensors[0]]).astype(np.int16)))
                    for g in integer)
    return {"bytes": len(data), "accounted_bytes": accounted, "container_padding_bytes": int(padding),
            "integer_kernel_layers": len(integer), "saturable_layers": int(saturable),
            "difference_pct": 100.0 * (len(data) - accounted) / accounted}


def isolated_session(f: OnnxFile, threads: Optional[int] = None):
    """ONNX Runtime on ``f`` in a child process with a time and memory limit (onnx_isolated.py):
    an ``IsolatedSession``, to close (or use as a context manager)."""
    from .onnx_isolated import IsolatedSession

    return IsolatedSession(f.data, f.shown_as, threads)


def probe_onnx(f: OnnxFile) -> None:
    """ONNX Runtime opens ``f`` and runs one blank image, in a limited child: an uploaded file
    is said to run only once it has."""
    with isolated_session(f) as session:
        crop = f.preprocess.crop
        session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, crop, crop), np.float32)})


def evaluate_onnx(f: OnnxFile, data, batch_size: Optional[int] = None, progress: Progress = None, session=None):
    """Metrics of the file itself, run by ONNX Runtime on the CPU in a limited child process
    (``session``: one from ``isolated_session`` to reuse; default: a new one)."""
    from ..evaluation.engines.onnxruntime_engine import DEFAULT_BATCH, run_session

    if list(data.image_shape) != [3, f.preprocess.crop, f.preprocess.crop]:
        raise OnnxFileError(f"the ONNX model takes images [3, {f.preprocess.crop}, {f.preprocess.crop}], the images are "
                            f"{list(data.image_shape)}")
    own = session is None
    session = session or isolated_session(f)
    try:
        return run_session(session, data, batch_size or DEFAULT_BATCH, progress)
    finally:
        if own:
            session.close()
