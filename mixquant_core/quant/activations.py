"""Activation quantization: the input of each quantized Conv/Linear layer, per tensor, on an
unsigned ``bits``-bit affine grid over a range calibrated on calibration images.

The grid is ONNX's QuantizeLinear/DequantizeLinear with uint8 codes: ``q = clamp(round(x / s) + z,
0, 2^b - 1)`` (round half to even, as ``torch.round``), ``x_hat = (q - z) * s``; the range is
widened to hold 0 (so zero padding is exact) and the scale clamped from below (a constant input
gives a finite grid). The torch engine applies it with forward pre-hooks (``quantized_inputs``);
the ONNX side puts the same (scale, zero-point) into Q/DQ pairs, so both compute the same codes.

An ``ActQuant`` is frozen data: bits, the range method, and per layer name its (lo, hi) range.
Layers left out of ``ranges`` keep float inputs (pinned in the plan). ``outputs`` adds the output
points of models/act_points.py: module -> (the layer it belongs to, lo, hi), each module's output
quantized by a forward hook (and by one Q/DQ pair on that tensor in ONNX), so that a runtime can
fuse residual Adds and the convs before them into integer kernels.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, Mapping, Tuple

import torch
from torch import nn

from ..errors import MixQuantError

ACT_BITS = (8,)
SCALE_EPS = float(torch.finfo(torch.float32).eps)


def act_qparams(lo: float, hi: float, bits: int = 8) -> Tuple[float, int]:
    """(scale, zero_point) of the unsigned ``bits``-bit grid over [lo, hi] widened to hold 0."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise MixQuantError(f"activation range [{lo}, {hi}] is not finite")
    if lo > hi:
        raise MixQuantError(f"activation range [{lo}, {hi}] is empty (lo > hi)")
    qmax = 2**bits - 1
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    # float32 arithmetic, as the scale will be stored and used in float32 by both engines
    scale = float(torch.clamp(torch.tensor((hi - lo) / qmax, dtype=torch.float32), min=SCALE_EPS))
    zero_point = int(min(max(round(-lo / scale), 0), qmax))
    return scale, zero_point


def fake_quantize_act(x: torch.Tensor, scale: float, zero_point: int, bits: int = 8) -> torch.Tensor:
    """QuantizeLinear then DequantizeLinear of ``x`` on the uint grid (float32 steps)."""
    s = torch.tensor(scale, dtype=torch.float32, device=x.device)
    q = torch.clamp(torch.round(x.float() / s) + zero_point, 0, 2**bits - 1)
    return ((q - zero_point) * s).to(x.dtype)


@dataclass(frozen=True, eq=False)
class ActQuant:
    """``bits``-bit inputs for the layers in ``ranges`` (name -> (lo, hi)), calibrated by ``method``."""

    bits: int
    method: str
    ranges: Mapping[str, Tuple[float, float]]
    calibration: Mapping[str, object] = field(default_factory=dict)
    outputs: Mapping[str, Tuple[str, float, float]] = field(default_factory=dict)

    def qparams(self, name: str) -> Tuple[float, int] | None:
        got = self.ranges.get(name)
        return None if got is None else act_qparams(got[0], got[1], self.bits)

    def output_qparams(self, module: str) -> Tuple[float, int]:
        _, lo, hi = self.outputs[module]
        return act_qparams(lo, hi, self.bits)

    def to_dict(self) -> dict:
        out = {"bits": self.bits, "method": self.method, "calibration": dict(self.calibration),
               "ranges": {name: [float(lo), float(hi)] for name, (lo, hi) in sorted(self.ranges.items())}}
        if self.outputs:
            out["outputs"] = {m: [layer, float(lo), float(hi)] for m, (layer, lo, hi) in sorted(self.outputs.items())}
        return out


@contextmanager
def quantized_inputs(model: nn.Module, acts: ActQuant) -> Iterator[nn.Module]:
    """Fake-quantize the input of every module named in ``acts.ranges`` and the output of every
    module in ``acts.outputs`` for the block (hooks, removed afterwards even on error)."""
    modules = dict(model.named_modules())
    missing = [name for name in list(acts.ranges) + list(acts.outputs) if name not in modules]
    if missing:
        raise MixQuantError(f"activation ranges name layer '{missing[0]}', which is not a module of this model")
    handles = []

    def hook_for(scale: float, zero_point: int):
        def hook(_module, args):
            return (fake_quantize_act(args[0], scale, zero_point, acts.bits),) + tuple(args[1:])
        return hook

    def output_hook_for(name: str, scale: float, zero_point: int):
        def hook(_module, _args, out):
            if not isinstance(out, torch.Tensor):
                raise MixQuantError(f"module '{name}' returns {type(out).__name__}, not one tensor: its output "
                                    "cannot be quantized (calibrate the activations again)")
            return fake_quantize_act(out, scale, zero_point, acts.bits)
        return hook

    try:
        for name in acts.ranges:
            handles.append(modules[name].register_forward_pre_hook(hook_for(*acts.qparams(name))))
        for name in acts.outputs:
            handles.append(modules[name].register_forward_hook(output_hook_for(name, *acts.output_qparams(name))))
        yield model
    finally:
        for h in handles:
            h.remove()


def act_qparams_table(acts: ActQuant) -> Dict[str, Tuple[float, int]]:
    """name -> (scale, zero_point) for every layer with quantized inputs."""
    return {name: acts.qparams(name) for name in acts.ranges}
