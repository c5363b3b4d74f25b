"""A bit-width plan: versioned JSON keyed by each layer's fully qualified name."""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence

import jsonschema
import torch
from torch import nn

from ..errors import PlanError
from ..files import atomic_write
from ..models.layers import LayerInfo, find_layers, layer_weight
from ..quant.qe import QETable
from ..quant.activations import ACT_BITS, ActQuant, quantized_inputs
from ..quant.quantizers import MAX_BITS, MIN_BITS, QUANTIZERS
from ..quant.recipe import Quantizer, Recipe, WeightRanges, acts_of, quantize_layer
from .size import float32_bytes, plan_size

PLAN_FORMAT = "mixquant-plan"
# Version 2 adds the optional "recipe": calibrated weight ranges and activation quantization
# (quant/recipe.py). A version-1 plan (no recipe) still loads and means weights only.
PLAN_VERSION = 2
_NAME = {"type": "string", "maxLength": 1000}
_RANGE = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
RECIPE_SCHEMA = {
    "type": "object",
    "properties": {
        "weight_ranges": {
            "type": ["object", "null"],
            "required": ["method", "ratios"],
            "properties": {
                "method": _NAME,
                "calibration": {"type": "object"},
                # one entry per planned layer: [name, bits, [clipping ratio per grid row]]
                "ratios": {"type": "array", "items": {
                    "type": "array", "minItems": 3, "maxItems": 3,
                    "prefixItems": [_NAME, {"type": "integer", "minimum": MIN_BITS, "maximum": MAX_BITS},
                                    {"type": "array", "minItems": 1,
                                     "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}}]}},
            },
        },
        "acts": {
            "type": ["object", "null"],
            "required": ["bits", "method", "ranges"],
            "properties": {
                "bits": {"enum": list(ACT_BITS)},
                "method": _NAME,
                "calibration": {"type": "object"},
                "ranges": {"type": "object", "additionalProperties": _RANGE},  # layer -> [lo, hi] of its input
                # output points (models/act_points.py): module -> [its layer, lo, hi] of its output
                "outputs": {"type": "object", "additionalProperties": {
                    "type": "array", "minItems": 3, "maxItems": 3,
                    "prefixItems": [_NAME, {"type": "number"}, {"type": "number"}]}},
            },
        },
    },
}

PLAN_SCHEMA = {
    "type": "object",
    "required": ["format", "version", "model", "quantizer", "qem", "candidate_bits", "layers", "size"],
    "properties": {
        "format": {"const": PLAN_FORMAT},
        "version": {"type": "integer"},
        "model": {
            "type": "object",
            "required": ["source", "name", "fingerprint"],
            "properties": {"source": {"type": "string"}, "name": {"type": "string"}, "fingerprint": {"type": "string"}},
        },
        "quantizer": {"enum": list(QUANTIZERS)},
        "qem": {"type": ["number", "null"], "minimum": 1},
        "candidate_bits": {"type": "array", "items": {"type": "integer", "minimum": MIN_BITS, "maximum": MAX_BITS}, "minItems": 1},
        "layers": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {
                "type": "object",
                "required": ["bits"],
                "properties": {
                    "bits": {"type": "integer", "minimum": MIN_BITS, "maximum": MAX_BITS},
                    "qe": {"type": ["number", "null"]},
                    "kind": {"type": "string"},
                    "params": {"type": "integer"},
                },
            },
        },
        "size": {"type": "object"},
        "recipe": RECIPE_SCHEMA,
    },
}


def _no_constants(name: str):
    raise PlanError(f"plan holds {name}, which is not a number JSON allows (QE and QEM must be finite)")


def float32_notice(left_float: int) -> str:
    """The one-line notice for a plan that does not cover every quantizable layer."""
    return (f"notice: the plan does not cover {left_float} quantizable layer(s): they stay float32 "
            "(size recomputed with them at 32 bits)")


@dataclass
class Plan:
    """Per-layer bit-widths for one model and quantizer, plus what they cost and save."""

    model: Dict[str, str]  # source, name, fingerprint
    quantizer: str
    qem: Optional[float]
    candidate_bits: List[int]
    layers: Dict[str, dict]  # name -> {"bits", "qe", "kind", "params"}, in model order
    size: Dict[str, float]
    version: int = PLAN_VERSION
    extra: Dict[str, object] = field(default_factory=dict)
    recipe_data: Optional[dict] = None  # the JSON "recipe": what calibration added to the scheme

    @property
    def bits(self) -> Dict[str, int]:
        return {name: int(v["bits"]) for name, v in self.layers.items()}

    @property
    def recipe(self) -> Quantizer:
        """What the plan quantizes with: its scheme name, or a Recipe with calibrated weight ranges
        and/or activation quantization (evaluation and export both use this)."""
        return recipe_from_dict(self.quantizer, self.recipe_data)

    def to_dict(self) -> dict:
        out = {"format": PLAN_FORMAT, "version": self.version, "model": dict(self.model),
               "quantizer": self.quantizer, "qem": self.qem, "candidate_bits": list(self.candidate_bits),
               "size": dict(self.size), "layers": self.layers}
        if self.extra:
            out["extra"] = self.extra
        if self.recipe_data:
            out["recipe"] = self.recipe_data
        return out

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)  # NaN/Infinity is not JSON

    @classmethod
    def from_dict(cls, data) -> "Plan":
        if not isinstance(data, dict):
            raise PlanError("plan JSON must be an object")
        if data.get("format") not in (None, PLAN_FORMAT):
            raise PlanError(f"not a MixQuant plan (format is {data.get('format')!r})")
        if isinstance(data.get("version"), int) and data["version"] > PLAN_VERSION:
            raise PlanError(f"plan version {data['version']} is newer than this MixQuant Studio reads ({PLAN_VERSION}); upgrade")
        try:
            jsonschema.validate(data, PLAN_SCHEMA)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p)[:80] for p in exc.absolute_path) or "(top level)"
            raise PlanError(f"invalid plan at {where}: {exc.message[:200]}") from None
        except RecursionError:
            raise PlanError("plan nests too deeply to be a plan") from None
        if data["qem"] is not None and not math.isfinite(data["qem"]):
            raise PlanError(f"invalid plan at qem: must be a finite number >= 1, got {data['qem']}")
        plan = cls(model=data["model"], quantizer=data["quantizer"], qem=data["qem"],
                   candidate_bits=list(data["candidate_bits"]), layers=data["layers"], size=data["size"],
                   version=data["version"], extra=data.get("extra", {}), recipe_data=data.get("recipe") or None)
        plan.check_recipe()
        return plan

    def check_recipe(self) -> None:
        """The recipe's numbers are usable and name only planned layers at their planned bits."""
        recipe = self.recipe
        if not isinstance(recipe, Recipe):
            return
        if recipe.weight_ranges is not None:
            for (name, b) in recipe.weight_ranges.ratios:
                if self.layers.get(name, {}).get("bits") != b:
                    raise PlanError(f"invalid plan at recipe/weight_ranges: layer '{name[:80]}' at {b} bits is not in the plan")
        if recipe.acts is not None:
            for name, (lo, hi) in recipe.acts.ranges.items():
                if name not in self.layers:
                    raise PlanError(f"invalid plan at recipe/acts: layer '{name[:80]}' is not in the plan")
                if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                    raise PlanError(f"invalid plan at recipe/acts/{name[:80]}: the range [{lo}, {hi}] is not a finite, "
                                    "ordered range")
            # every planned layer's input is quantized (it has a range) or pinned float (calibration/keep_float)
            for module, (layer, lo, hi) in recipe.acts.outputs.items():
                if layer not in recipe.acts.ranges:
                    raise PlanError(f"invalid plan at recipe/acts/outputs/{module[:80]}: its layer '{layer[:80]}' has no "
                                    "quantized input in the plan")
                if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                    raise PlanError(f"invalid plan at recipe/acts/outputs/{module[:80]}: the range [{lo}, {hi}] is not a "
                                    "finite, ordered range")
            kept = recipe.acts.calibration.get("keep_float")
            kept = set(kept) if isinstance(kept, list) else set()
            missing = [name for name in self.layers if name not in recipe.acts.ranges and name not in kept]
            if missing:
                raise PlanError(f"invalid plan at recipe/acts: layer '{missing[0][:80]}' has no calibrated input range "
                                f"(nor is it kept float){f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}: "
                                "calibrate the activations again (--act-bits 8 --calib DIR)")

    @classmethod
    def from_json(cls, text: str | bytes) -> "Plan":
        try:
            data = json.loads(text, parse_constant=_no_constants)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PlanError(f"plan is not valid JSON: {str(exc)[:200]}") from None
        except RecursionError:
            raise PlanError("plan JSON nests too deeply to be a plan") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path) -> "Plan":
        try:
            with open(path, "rb") as fh:
                return cls.from_json(fh.read())
        except OSError as exc:
            raise PlanError(f"cannot read plan file '{path}': {exc.strerror}") from None

    def save(self, path) -> None:
        """Write the plan JSON atomically (a failed write leaves an existing file as it was)."""
        atomic_write(path, self.to_json() + "\n")

    def fit(self, model: nn.Module) -> int:
        """``check_against``, then the size recomputed for ``model`` (never the file's word);
        returns how many of the model's quantizable layers the plan leaves float32."""
        layers = self.check_against(model)
        self.size = plan_size(float32_bytes(model), layers, [self.bits[l.name] for l in layers], self.quantizer).to_dict()
        return len(find_layers(model)) - len(layers)

    def check_against(self, model: nn.Module) -> List[LayerInfo]:
        """The plan's layers in the model, or a PlanError naming the first mismatch."""
        found = {layer.name: layer for layer in find_layers(model)}
        self.check_recipe()
        missing = [name for name in self.layers if name not in found]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise PlanError(f"plan is for another model ({self.model.get('name')}): layer '{missing[0]}' is not in this model{more}")
        acts = acts_of(self.recipe)
        if acts is not None and acts.outputs:
            modules = {name for name, _ in model.named_modules()}
            stray = [m for m in acts.outputs if m not in modules]
            if stray:
                raise PlanError(f"plan is for another model: its activation output point '{stray[0][:80]}' is not a "
                                "module of this model")
        for name, entry in self.layers.items():
            params = entry.get("params")
            if params is not None and params != found[name].params:
                raise PlanError(f"plan is for another model: layer '{name}' has {found[name].params} weights here, {params} in the plan")
        return [found[name] for name in self.layers]


def recipe_from_dict(quantizer: str, data: Optional[dict]) -> Quantizer:
    """A plan's scheme and "recipe" JSON as the Quantizer evaluation and export take."""
    if not data or (data.get("weight_ranges") is None and data.get("acts") is None):
        return quantizer
    wr, acts = data.get("weight_ranges"), data.get("acts")
    return Recipe(
        quantizer,
        None if wr is None else WeightRanges(wr["method"], {(n, int(b)): tuple(map(float, r)) for n, b, r in wr["ratios"]},
                                             wr.get("calibration", {})),
        None if acts is None else ActQuant(int(acts["bits"]), acts["method"],
                                           {n: (float(lo), float(hi)) for n, (lo, hi) in acts["ranges"].items()},
                                           acts.get("calibration", {}),
                                           {m: (str(layer), float(lo), float(hi))
                                            for m, (layer, lo, hi) in acts.get("outputs", {}).items()}))


def recipe_for_plan(recipe: Quantizer, bits: Dict[str, int]) -> Optional[dict]:
    """The "recipe" JSON of a plan with per-layer ``bits``: only its layers at their bits."""
    if not isinstance(recipe, Recipe) or recipe.plain:
        return None
    out = recipe.to_dict()
    del out["quantizer"]
    if recipe.weight_ranges is not None:
        out["weight_ranges"]["ratios"] = [e for e in out["weight_ranges"]["ratios"] if bits.get(e[0]) == e[1]]
    if recipe.acts is not None:
        out["acts"]["ranges"] = {n: r for n, r in out["acts"]["ranges"].items() if n in bits}
        if "outputs" in out["acts"]:
            out["acts"]["outputs"] = {m: e for m, e in out["acts"]["outputs"].items() if e[0] in bits}
    return out


def make_plan(identity: Dict[str, str], table: QETable, bits: Sequence[int], qem: Optional[float],
              float_bytes: int, extra: Optional[dict] = None, recipe: Quantizer = None) -> Plan:
    """The Plan for per-layer ``bits`` (model order of ``table``); ``recipe`` (a Recipe) is recorded
    for its planned layers."""
    col = {b: j for j, b in enumerate(table.bits)}
    layers = {}
    for i, (layer, b) in enumerate(zip(table.layers, bits)):
        qe = float(table.qe[i, col[int(b)]]) if int(b) in col else None
        layers[layer.name] = {"bits": int(b), "qe": qe, "kind": layer.kind, "params": layer.params}
    size = plan_size(float_bytes, table.layers, bits, table.quantizer)
    named = {name: v["bits"] for name, v in layers.items()}
    return Plan(model=dict(identity), quantizer=table.quantizer, qem=None if qem is None else float(qem),
                candidate_bits=list(table.bits), layers=layers, size=size.to_dict(), extra=extra or {},
                recipe_data=recipe_for_plan(recipe, named))


@contextmanager
def applied(model: nn.Module, bits: Dict[str, int], quantizer: Quantizer) -> Iterator[nn.Module]:
    """Fake-quantize the named layers in place for the duration of the block, then restore; a
    Recipe with activation quantization also quantizes the listed layers' inputs (hooks).

    Only the original weights of the quantized layers are held aside (not a second model), and
    the swap writes into the existing parameter storage so references to the model stay valid.
    """
    weights = {name: layer_weight(model, name) for name in bits}  # every name checked before any write
    saved = {}
    try:
        with torch.no_grad():
            for name, b in bits.items():
                w = weights[name]
                saved[name] = w.detach().clone()
                w.copy_(quantize_layer(quantizer, name, saved[name].float(), int(b)).to(w.dtype))
        acts = acts_of(quantizer)
        if acts is None:
            yield model
        else:
            with quantized_inputs(model, acts):
                yield model
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                weights[name].copy_(original)


def quantize_model_(model: nn.Module, plan: Plan) -> nn.Module:
    """Apply a plan's weights permanently, in place (for export or the user's own pipeline); its
    activation quantization, if any, is not a weight change (``applied`` or an ONNX export has it)."""
    plan.check_against(model)
    recipe = plan.recipe
    with torch.no_grad():
        for name, b in plan.bits.items():
            w = layer_weight(model, name)
            w.copy_(quantize_layer(recipe, name, w.detach().float(), b).to(w.dtype))
    return model
