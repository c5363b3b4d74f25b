"""Which weights MixQuant quantizes, by name, and how a name reaches its tensor.

A layer is one weight tensor quantized at one bit-width:

* the ``weight`` of every Conv1d/2d/3d and Linear module (attention output projections and MLP
  Linears included), named by the module's fully qualified name (``features.3.conv``), as plans
  always named them;
* each projection weight nn.MultiheadAttention holds as its own parameter instead of in a Linear:
  the packed ``in_proj_weight`` (q, k and v stacked, [3E, E]) or, when the key/value sizes differ
  (``kdim``/``vdim``), ``q_proj_weight``, ``k_proj_weight`` and ``v_proj_weight``; named by the
  parameter's fully qualified name (``encoder.layers.encoder_layer_0.self_attention.in_proj_weight``).
  The packed tensor is ONE layer (one bit-width for q, k and v); per-channel quantizers still give
  each of its 3E output rows its own range.

``weight_ref`` is the only way from a layer name to its tensor (a live Parameter, written in place)
and its state_dict key: no stage builds ``NAME.weight`` itself. ``float32_rest`` says what stays
float32 and why.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import MixQuantError

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# Layer kinds of the paper's section 6 ablation, plus depthwise (MobileNet/EfficientNet) ...
CNN_KINDS = ("first_conv", "kxk_conv", "1x1_conv", "depthwise", "fc")
# ... and the roles a weight plays in a transformer block, decided from the module structure.
TRANSFORMER_KINDS = ("patch_embed", "attn_qkv", "attn_out", "mlp_in", "mlp_out", "head")
KINDS = CNN_KINDS + TRANSFORMER_KINDS
# Kinds whose weight has a known rank (a file's claims are checked against its tensors with these);
# a transformer's projections and head may be Linear (2-D) or 1x1 Conv (ConvNeXt's MLP): any rank.
MATRIX_KINDS = frozenset({"fc"})
CONV_KINDS = frozenset({"first_conv", "kxk_conv", "1x1_conv", "depthwise", "patch_embed"})

# Projection weights nn.MultiheadAttention holds itself (not in a Linear): the packed one, or the
# three separate ones it uses when q, k and v have different sizes. The unused ones are None.
ATTENTION_PARAMETERS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
# Names attention modules give their projection Linears (timm Attention/WindowAttention, torchvision
# ShiftedWindowAttention, nn.MultiheadAttention's out_proj, EVA-style separate q/k/v).
QKV_CHILDREN = frozenset({"qkv", "q", "k", "v", "kv", "q_proj", "k_proj", "v_proj", "to_qkv", "to_q", "to_k", "to_v"})
OUT_CHILDREN = frozenset({"proj", "out_proj", "o_proj", "to_out"})


@dataclass(frozen=True)
class LayerInfo:
    name: str  # a module's fully qualified name ("_blocks.3._depthwise_conv"), or an attention parameter's
    kind: str  # one of KINDS
    params: int  # number of weight elements
    shape: tuple

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "params": self.params, "shape": list(self.shape)}


@dataclass(frozen=True)
class WeightRef:
    """Where a layer's weight lives: ``owner.attr`` in the model, ``key`` in its state_dict."""

    owner: nn.Module
    attr: str  # "weight" for a Conv/Linear module, else the attention parameter's name
    key: str

    @property
    def tensor(self) -> torch.Tensor:
        # read through getattr every time: a parametrization (reconstruction) replaces the attribute
        return getattr(self.owner, self.attr)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _class_name(module: nn.Module) -> str:
    """The module's class name; TorchScript modules keep theirs as ``original_name``."""
    if isinstance(module, torch.jit.ScriptModule):
        return getattr(module, "original_name", "")
    return type(module).__name__


# TorchScript modules are RecursiveScriptModule instances; they keep the class name and attributes
# (nn.MultiheadAttention's out_proj is a Linear subclass of its own name).
_SCRIPT_NAMES = {"Conv1d": "conv", "Conv2d": "conv", "Conv3d": "conv", "Linear": "fc", "NonDynamicallyQuantizableLinear": "fc"}


def _layer_type(module: nn.Module) -> str | None:
    """'conv', 'fc' or None (not a quantizable module), for eager and TorchScript modules alike."""
    if isinstance(module, nn.Linear):
        return "fc"
    if isinstance(module, QUANTIZABLE):
        return "conv"
    if isinstance(module, torch.jit.ScriptModule):
        return _SCRIPT_NAMES.get(getattr(module, "original_name", ""))
    return None


def _is_multihead_attention(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) or _class_name(module) == "MultiheadAttention"


def _projection_attrs(module: nn.Module) -> List[str]:
    """The attention projection weights ``module`` holds as its own parameters (MHA only)."""
    if not _is_multihead_attention(module):
        return []
    return [attr for attr in ATTENTION_PARAMETERS if getattr(module, attr, None) is not None]


def _own_layers(name: str, module: nn.Module) -> List[Tuple[str, torch.Tensor]]:
    """(layer name, weight) of the layers ``module`` itself holds: its Conv/Linear weight, or its
    attention projection parameters."""
    if _layer_type(module) is not None:
        w = getattr(module, "weight", None)
        return [] if w is None else [(name, w)]
    return [(_join(name, attr), getattr(module, attr)) for attr in _projection_attrs(module)]


# --- one resolver: layer name -> tensor and state_dict key ------------------------------------
def _child(module: nn.Module, part: str) -> Optional[nn.Module]:
    child = module._modules[part] if part in module._modules else getattr(module, part, None)
    return child if isinstance(child, nn.Module) else None


def _walk(model: nn.Module, dotted: str) -> Optional[nn.Module]:
    """The submodule at ``dotted`` (walked part by part: building a dict of every module first
    costs more than the fast QE table itself on deep models), or None."""
    module: Optional[nn.Module] = model
    for part in dotted.split(".") if dotted else ():
        module = _child(module, part)
        if module is None:
            return None
    return module


def weight_ref(model: nn.Module, name: str) -> WeightRef:
    """Where layer ``name``'s weight lives, or a MixQuantError if no such layer is in ``model``."""
    module = _walk(model, name)
    if module is not None and _layer_type(module) is not None and getattr(module, "weight", None) is not None:
        return WeightRef(module, "weight", _join(name, "weight"))
    owner_name, _, attr = name.rpartition(".")
    owner = _walk(model, owner_name) if module is None else None
    if owner is not None and attr in _projection_attrs(owner):
        return WeightRef(owner, attr, name)
    raise MixQuantError(f"layer '{name[:200]}' is not in this model")


def layer_weight(model: nn.Module, name: str) -> torch.Tensor:
    """Layer ``name``'s weight: the model's own Parameter (writing into it changes the model)."""
    return weight_ref(model, name).tensor


def state_key(model: nn.Module, name: str) -> str:
    """Layer ``name``'s weight key in ``model.state_dict()`` (and in a traced ONNX graph)."""
    return weight_ref(model, name).key


def key_for_name(name: str) -> str:
    """The state_dict key of layer ``name`` without the model at hand (files name their tensors by
    it): a module layer's is NAME.weight, an attention parameter's is its own name."""
    return name if name.rpartition(".")[2] in ATTENTION_PARAMETERS else f"{name}.weight"


def name_for_key(key: str) -> Optional[str]:
    """The layer whose weight has state_dict ``key`` (the inverse of ``key_for_name``), or None."""
    if key.rpartition(".")[2] in ATTENTION_PARAMETERS:
        return key
    return key[: -len(".weight")] if key.endswith(".weight") else None


def layer_names(model: nn.Module) -> List[str]:
    """Every layer's name in model order (``find_layers`` without the kinds)."""
    return [name for module_name, module in model.named_modules() for name, _ in _own_layers(module_name, module)]


def layer_weights(model: nn.Module, layers: Iterable[LayerInfo]) -> List[torch.Tensor]:
    """Each layer's weight, in order."""
    return [layer_weight(model, layer.name) for layer in layers]


# --- kinds --------------------------------------------------------------------------------------
def _cnn_kind(module: nn.Module, is_first_conv: bool) -> str:
    if _layer_type(module) == "fc":
        return "fc"
    if is_first_conv:
        return "first_conv"
    if module.groups > 1 and module.groups == module.in_channels:
        return "depthwise"
    if all(k == 1 for k in module.kernel_size):
        return "1x1_conv"
    return "kxk_conv"


def _is_attention(module: nn.Module) -> bool:
    return _class_name(module).endswith("Attention")  # nn.MultiheadAttention, timm Attention, WindowAttention, ...


def _is_mlp(module: nn.Module) -> bool:
    # timm Mlp/GluMlp/GlobalResponseNormMlp/SwiGLU, torchvision MLP/MLPBlock; exact endings, so that a
    # whole model called e.g. MlpMixer is not one
    cls = _class_name(module)
    return cls.endswith(("Mlp", "MLP", "MLPBlock")) or cls == "SwiGLU"


def _is_torch_transformer_layer(module: nn.Module) -> bool:
    return _class_name(module) in ("TransformerEncoderLayer", "TransformerDecoderLayer")


def _attention_kinds(name: str, module: nn.Module) -> Dict[str, str]:
    kinds = {_join(name, attr): "attn_qkv" for attr in _projection_attrs(module)}
    for child_name, child in module.named_children():
        if _layer_type(child) is not None:
            if child_name in QKV_CHILDREN:
                kinds[_join(name, child_name)] = "attn_qkv"
            elif child_name in OUT_CHILDREN:
                kinds[_join(name, child_name)] = "attn_out"
    return kinds


def _mlp_kinds(name: str, module: nn.Module) -> Dict[str, str]:
    """The MLP's last layer projects back (mlp_out); every one before it expands (mlp_in)."""
    inner = [_join(name, n) for n, m in module.named_modules() if _layer_type(m) is not None]
    return {n: "mlp_out" if i == len(inner) - 1 else "mlp_in" for i, n in enumerate(inner)}


def _feedforward_kinds(name: str, module: nn.Module) -> Dict[str, str]:
    """nn.TransformerEncoderLayer/DecoderLayer keep their MLP as linear1 -> linear2."""
    return {_join(name, "linear1"): "mlp_in", _join(name, "linear2"): "mlp_out"}


def _classifier_names(model: nn.Module, modules: Dict[nn.Module, str], last_linear: Optional[str]) -> List[str]:
    """The model's classifier Linear(s): timm says which (``get_classifier``, two for distilled
    DeiT); otherwise the last Linear of the model."""
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier) and not isinstance(model, torch.jit.ScriptModule):
        try:
            heads = get_classifier()
        except Exception:  # a model's own method: any failure means "no answer", not a broken scan
            heads = None
        if heads is not None:
            heads = heads if isinstance(heads, (tuple, list)) else [heads]
            return [modules[h] for h in heads if isinstance(h, nn.Module) and _layer_type(h) == "fc" and h in modules]
    return [last_linear] if last_linear is not None else []


def _is_patchify(module: nn.Module) -> bool:
    """A conv whose stride equals its kernel: it cuts the image into non-overlapping patches."""
    return tuple(module.kernel_size) == tuple(module.stride)


def transformer_kinds(model: nn.Module) -> Dict[str, str]:
    """Layer name -> transformer kind for the layers whose role the module structure tells; empty for
    a model without attention or MLP blocks (a CNN keeps its CNN kinds exactly)."""
    kinds: Dict[str, str] = {}
    has_attention = False
    modules: Dict[nn.Module, str] = {}
    first_conv = last_linear = None
    for name, module in model.named_modules():
        modules.setdefault(module, name)
        if _is_attention(module) and (name or _is_multihead_attention(module)):  # a model class may end in "Attention"
            has_attention = True
            kinds.update(_attention_kinds(name, module))
        elif name and _is_mlp(module):
            kinds.update(_mlp_kinds(name, module))
        elif _is_torch_transformer_layer(module):
            kinds.update(_feedforward_kinds(name, module))
        layer_type = _layer_type(module)
        if layer_type == "conv" and first_conv is None:
            first_conv = (name, module)
        elif layer_type == "fc":
            last_linear = name
    if not kinds:
        return {}
    if has_attention and first_conv is not None and _is_patchify(first_conv[1]):
        kinds[first_conv[0]] = "patch_embed"
    if last_linear in kinds:
        last_linear = None  # the model ends in an MLP or a projection, not a classifier
    for name in _classifier_names(model, modules, last_linear):
        kinds[name] = "head"
    return kinds


def find_layers(model: nn.Module, exclude: Sequence[str] = ()) -> List[LayerInfo]:
    """Quantizable layers in model order; ``exclude`` holds fnmatch patterns of names to skip."""
    roles = transformer_kinds(model)
    layers: List[LayerInfo] = []
    seen_conv = False
    for module_name, module in model.named_modules():
        layer_type = _layer_type(module)
        for name, w in _own_layers(module_name, module):
            is_conv = layer_type == "conv"
            # a weight that is not a module's is an attention projection, whatever holds the attention
            kind = roles.get(name) or (_cnn_kind(module, is_conv and not seen_conv) if layer_type else "attn_qkv")
            seen_conv = seen_conv or is_conv
            if any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
                continue
            layers.append(LayerInfo(name, kind, int(w.numel()), tuple(w.shape)))
    return layers


def pinned_mask(layers: Sequence[LayerInfo], keep_first_last: bool) -> List[bool]:
    """Layers held at 8 bits: the first and last quantizable layer when asked (a common practice)."""
    mask = [False] * len(layers)
    if keep_first_last and layers:
        mask[0] = mask[-1] = True
    return mask


# --- what stays float32 -------------------------------------------------------------------------
# Why a parameter is not quantized, in the order reports list them.
FLOAT32_REASONS = (
    "layer left float32 (excluded)",
    "normalization",
    "bias",
    "position embedding",
    "relative position bias",
    "class/distillation token",
    "layer scale",
    "embedding table",
    "other",
)


@dataclass(frozen=True)
class Float32Group:
    """Parameters that stay float32 for one reason."""

    reason: str  # one of FLOAT32_REASONS
    tensors: int
    params: int
    names: Tuple[str, ...]  # their state_dict keys

    def to_dict(self) -> dict:
        return {"reason": self.reason, "tensors": self.tensors, "params": self.params, "names": list(self.names)}


def _parameter_owners(model: nn.Module) -> Dict[str, Tuple[nn.Module, str]]:
    # named_parameters(recurse=False), not _parameters: a TorchScript module's cannot be iterated
    return {_join(mname, attr): (m, attr) for mname, m in model.named_modules()
            for attr, _ in m.named_parameters(recurse=False)}


def _float32_reason(owner: nn.Module, attr: str) -> str:
    cls, low = _class_name(owner), attr.lower()
    if "Norm" in cls:  # BatchNorm, LayerNorm, GroupNorm, RMSNorm, timm LayerNorm2d: scale and shift
        return "normalization"
    if "relative_position" in low:
        return "relative position bias"
    if low == "bias" or low.endswith("_bias") or low in ("bias_k", "bias_v"):
        return "bias"
    if "pos_embed" in low or "position" in low:
        return "position embedding"
    if low.endswith("token"):
        return "class/distillation token"
    if "LayerScale" in cls or low in ("gamma", "gamma_1", "gamma_2", "ls", "layer_scale"):
        return "layer scale"
    if isinstance(owner, nn.Embedding) or cls == "Embedding":
        return "embedding table"
    return "other"


def float32_rest(model: nn.Module, layers: Sequence[LayerInfo]) -> List[Float32Group]:
    """The parameters no layer of ``layers`` covers, grouped by why they stay float32 (shared
    parameters counted once, as ``model.parameters()`` does)."""
    covered = {state_key(model, layer.name) for layer in layers}
    all_layers = {state_key(model, layer.name) for layer in find_layers(model)}
    owners = _parameter_owners(model)
    groups: Dict[str, List[Tuple[str, int]]] = {}
    for key, p in model.named_parameters():
        if key in covered:
            continue
        reason = FLOAT32_REASONS[0] if key in all_layers else _float32_reason(*owners[key])
        groups.setdefault(reason, []).append((key, int(p.numel())))
    return [Float32Group(r, len(groups[r]), sum(n for _, n in groups[r]), tuple(k for k, _ in groups[r]))
            for r in FLOAT32_REASONS if r in groups]
