"""What a layer sees: the Hessian H = 2 X X^T / n of a layer's inputs on calibration images,
collected by a forward hook, as the columns the layer's weight rows multiply (a Linear's input
rows; a conv's im2col patches after its own SAME padding, one matrix per group; an attention's
q/k/v row blocks). GPTQ solves with these (recon/gptq.py); loss-aware ranges score clipping with
the same sums (plans/ranges.py). Hessians are accumulated in chunks of images so an im2col never
holds more than ``UNFOLD_ELEMENTS`` numbers.
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Callable, Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MixQuantError
from .layers import WeightRef

UNFOLD_ELEMENTS = 2 ** 24  # largest im2col a hook builds at once (64 MB of float32)


def _same_padding(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``x`` as the conv's own F.conv2d sees it: EfficientNet's static / dynamic SAME padding and
    non-zero padding modes applied first (the hook receives the module's raw input)."""
    pad = getattr(module, "static_padding", None)
    if isinstance(pad, nn.Module):
        return pad(x)
    if type(module).__name__ == "Conv2dDynamicSamePadding":
        ih, iw = x.shape[-2:]
        (kh, kw), (sh, sw), (dh, dw) = module.weight.shape[-2:], module.stride, module.dilation
        ph = max((-(-ih // sh) - 1) * sh + (kh - 1) * dh + 1 - ih, 0)
        pw = max((-(-iw // sw) - 1) * sw + (kw - 1) * dw + 1 - iw, 0)
        return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
    if module.padding_mode != "zeros":
        return F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
    return x


def conv_columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """im2col of a Conv1d/Conv2d input ``x`` [N, C_in, ...] as [G, C_in/G * k, N * L]: group g's
    patches, in the order of that group's flattened weight rows."""
    conv1d = x.dim() == 3
    if conv1d:
        x = x.unsqueeze(2)
    if x.dim() != 4:
        raise MixQuantError(f"GPTQ handles Conv1d, Conv2d and Linear layers, not {type(module).__name__}")
    two = lambda v: (1, v[0]) if conv1d else tuple(v)  # noqa: E731
    kernel = (1,) + tuple(module.weight.shape[-1:]) if conv1d else tuple(module.weight.shape[-2:])
    padding = module.padding
    if isinstance(padding, str):  # "same" / "valid": PyTorch pads symmetrically (odd kernels)
        padding = tuple(0 if padding == "valid" else d * (k - 1) // 2 for d, k in zip(two(module.dilation), kernel))
    else:
        x = _same_padding(module, x)
        padding = two(padding)
    cols = F.unfold(x, kernel, dilation=two(module.dilation), padding=padding, stride=two(module.stride))
    g = module.groups
    n, ck, length = cols.shape
    return cols.reshape(n, g, ck // g, length).permute(1, 2, 0, 3).reshape(g, ck // g, n * length)


class Hessian:
    """Running sum of X X^T ([G, C, C], float64) over the inputs a layer sees."""

    def __init__(self):
        self.sum: Optional[torch.Tensor] = None
        self.count = 0

    def add(self, cols: torch.Tensor) -> None:
        """``cols`` [G, C, M]: M more input columns."""
        cols = cols.detach().float()
        part = torch.bmm(cols, cols.transpose(1, 2)).double()
        self.sum = part if self.sum is None else self.sum + part
        self.count += cols.shape[-1]

    def matrix(self) -> torch.Tensor:
        """H = 2 X X^T / n (the scale is immaterial to GPTQ; it keeps the numbers moderate)."""
        return 2.0 * self.sum / max(self.count, 1)


def _chunks(x: torch.Tensor, per_image: int):
    step = max(1, UNFOLD_ELEMENTS // max(per_image, 1))
    return (x[i:i + step] for i in range(0, len(x), step))


def _rows(x: torch.Tensor) -> torch.Tensor:
    """A Linear's / attention projection's input [..., C] as [1, C, M]."""
    return x.detach().reshape(-1, x.shape[-1]).t().unsqueeze(0)


class LayerInputs:
    """The Hessians of one layer, filled by a forward hook on its module while the model runs.

    ``attention``: the nn.MultiheadAttention whose ``out_proj`` this layer is. That Linear is never
    called as a module (the attention function reads its weight), so its input is taken by running
    the attention again with an identity output projection: exactly the heads' concatenated output."""

    def __init__(self, ref: WeightRef, attention: Optional[nn.Module] = None):
        self.ref = ref
        self.attention = attention
        self.hessians: List[Hessian] = []  # one, or one per q/k/v row block of a packed in_proj_weight
        self._handle = None

    def __enter__(self):
        owner = self.ref.owner
        if self.attention is not None:
            self._handle = self.attention.register_forward_hook(self._out_proj_hook, with_kwargs=True)
        elif self.ref.attr == "weight":
            self._handle = owner.register_forward_hook(self._module_hook)
        else:  # nn.MultiheadAttention: its query/key/value, positional or keyword
            self._handle = owner.register_forward_pre_hook(self._attention_hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self._handle.remove()

    def _add(self, parts: List[torch.Tensor]) -> None:
        if not self.hessians:
            self.hessians = [Hessian() for _ in parts]
        for h, cols in zip(self.hessians, parts):
            h.add(cols)

    def _module_hook(self, module, inputs, _output) -> None:
        x = inputs[0]
        if self.ref.tensor.dim() == 2:  # Linear (any subclass)
            self._add([_rows(x)])
            return
        per_image = x[0].numel() * module.weight.shape[2:].numel()  # im2col numbers per image, about
        for part in _chunks(x, per_image):
            self._add([conv_columns(module, part)])

    def _out_proj_hook(self, module, args, kwargs, _output) -> None:
        proj = module.out_proj
        saved = proj.weight, proj.bias
        try:  # plain attributes for one call: the module's own forward, so no hook runs again
            del proj.weight
            proj.weight = torch.eye(proj.in_features, dtype=saved[0].dtype, device=saved[0].device)
            if saved[1] is not None:
                del proj.bias
                proj.bias = torch.zeros_like(saved[1])
            heads = module.forward(*args, **kwargs)[0]
        finally:
            proj.weight = saved[0]
            if saved[1] is not None:
                proj.bias = saved[1]
        self._add([_rows(heads)])

    def _attention_hook(self, module, args, kwargs) -> None:
        names = ("query", "key", "value")
        qkv = [args[i] if len(args) > i else kwargs.get(n) for i, n in enumerate(names)]
        attr = self.ref.attr
        if attr == "in_proj_weight":
            same = qkv[1] is qkv[0] and qkv[2] is qkv[0]
            self._add([_rows(qkv[0])] if same else [_rows(t) for t in qkv])
        else:
            self._add([_rows(qkv["qkv".index(attr[0])])])  # q_proj_weight: the query, ...

    @property
    def samples(self) -> int:
        """Input columns seen (a Linear's rows, a conv's im2col positions; the fewest of the row
        blocks'): how many samples each Hessian is estimated from."""
        return min((h.count for h in self.hessians), default=0)

    def matrices(self, name: str) -> torch.Tensor:
        """[G, C, C]: the group / row-block Hessians, checked finite."""
        if not self.hessians:
            raise MixQuantError(f"layer '{name}' saw no input on the calibration images (is it used by the model?)")
        mats = [h.matrix() for h in self.hessians]
        h = torch.cat(mats) if len(mats) > 1 else mats[0]
        if not torch.isfinite(h).all():
            raise MixQuantError(f"layer '{name}': its inputs on the calibration images are NaN/Inf; "
                                "GPTQ needs finite activations")
        return h


class CapturedInputs(LayerInputs):
    """The input columns themselves of one run (not their Gram sums), to pair with another run's."""

    def __init__(self, ref: WeightRef, attention: Optional[nn.Module] = None):
        super().__init__(ref, attention)
        self.parts: List[List[torch.Tensor]] = []

    def _add(self, parts: List[torch.Tensor]) -> None:
        self.parts.append([p.detach().float() for p in parts])


def layer_inputs(model: nn.Module, name: str, kind=LayerInputs) -> LayerInputs:
    """The Hessian collector (or ``kind``) of layer ``name`` (an attention's ``out_proj`` handled)."""
    from .layers import weight_ref

    ref = weight_ref(model, name)
    parent_name, _, child = name.rpartition(".")
    parent = _submodule(model, parent_name) if child == "out_proj" else None
    return kind(ref, parent if isinstance(parent, nn.MultiheadAttention) else None)


def _submodule(model: nn.Module, dotted: str) -> Optional[nn.Module]:
    try:
        return model.get_submodule(dotted) if dotted else model
    except AttributeError:
        return None


def collected(model: nn.Module, names: Sequence[str], run: Callable[[torch.Tensor], object],
              batches: Iterable[torch.Tensor]) -> List[LayerInputs]:
    """The collectors of layers ``names``, filled while ``run`` (the model, or a stage of it) sees
    each of ``batches`` without gradients; every hook is removed afterwards, even on error."""
    inputs = [layer_inputs(model, name) for name in names]
    with ExitStack() as stack, torch.no_grad():
        for coll in inputs:
            stack.enter_context(coll)
        for x in batches:
            run(x)
    return inputs


def paired_grams(model: nn.Module, name: str, run_target: Callable[[torch.Tensor], object],
                 run_actual: Callable[[torch.Tensor], object], pairs: Iterable[tuple]):
    """Layer ``name``'s inputs in two runs over the same images, ``run_target`` (the float32 model)
    and ``run_actual`` (the model as quantized so far), each of ``pairs`` a (target batch, actual
    batch): ([G, C, C] H = 2 B B^T / n of the actual inputs B, [G, C, C] 2 A B^T / n with A the
    target's), float64. With them a layer can be fitted to its float32 output from the inputs it
    will really get (recon/gptq.py ``float_target``)."""
    gram = cross = None
    count = 0
    with torch.no_grad():
        for x_target, x_actual in pairs:
            runs = []
            for run, x in ((run_target, x_target), (run_actual, x_actual)):
                with layer_inputs(model, name, CapturedInputs) as coll:
                    run(x)
                runs.append([torch.cat(blocks, dim=-1) for blocks in zip(*coll.parts)])
            a, b = (torch.cat(parts) if len(parts) > 1 else parts[0] for parts in runs)
            if a.shape != b.shape:
                raise MixQuantError(f"layer '{name}': its inputs differ in shape between two runs")
            g, c = torch.bmm(b, b.transpose(1, 2)).double(), torch.bmm(a, b.transpose(1, 2)).double()
            gram, cross = (g, c) if gram is None else (gram + g, cross + c)
            count += b.shape[-1]
    if gram is None:
        raise MixQuantError(f"layer '{name}' saw no input on the calibration images (is it used by the model?)")
    if not (torch.isfinite(gram).all() and torch.isfinite(cross).all()):
        raise MixQuantError(f"layer '{name}': its inputs on the calibration images are NaN/Inf; "
                            "GPTQ needs finite activations")
    return 2.0 * gram / count, 2.0 * cross / count, count
