"""Calibrating activation ranges: run the float model over calibration images and choose, per layer,
the (lo, hi) range of its input that ``ActQuant`` quantizes on (quant/activations.py).

Forward pre-hooks see each listed layer's input batch by batch; memory stays bounded whatever the
number of images: a running min/max per layer, and a bounded random sample of its values
(``SAMPLE_CAP`` per layer, seeded, so the same images give the same ranges). The methods:

- ``minmax``: the exact smallest and largest input value seen;
- ``percentile``: the ``PERCENTILE`` / (100 - ``PERCENTILE``) percentiles of the sample (outliers clipped);
- ``mse``: the range [a * min, a * max] whose 8-bit grid has the least squared error on the sample
  (a on a grid in (0, 1], a = 1 being min/max, so never worse than min/max on the sample).

Calibration uses the float model (weights not quantized): one recipe serves every plan. A
layer's input that is NaN/Inf is a one-line MixQuantError naming it; a constant input (zero
range) is fine (the grid's scale is clamped, activations.act_qparams).

With ``outputs`` (the default), the output points of models/act_points.py are added: found on the
traced float graph, the shared ones on their layer's input range, the others calibrated as the
inputs are (forward hooks); a point whose module does not run exactly once per forward is dropped
(its tensor stays float, as without points), and so are all of them for a model that cannot be traced.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..data.image_sets import EvalTensors
from ..errors import DatasetError, MixQuantError
from .activations import ACT_BITS, ActQuant, act_qparams, fake_quantize_act

Progress = Optional[Callable[[int, int, str], None]]

ACT_METHODS = ("minmax", "percentile", "mse")
# Chosen by measurement on EfficientNet-Lite0 (docs/RESULTS.md, "Activation quantization (issue #20)").
DEFAULT_ACT_METHOD = "minmax"
PERCENTILE = 99.99  # upper percentile kept (the lower one is 100 - PERCENTILE)
SAMPLE_CAP = 1 << 18  # values kept per layer for percentile/MSE (1 MB of float32 each)
PER_BATCH = 1 << 15  # values drawn from one batch's input of one layer
MSE_GRID = 100  # shrink factors tried by "mse", evenly over (0, 1]
BATCH = 32


@dataclass
class _Stats:
    """What one layer's inputs have shown so far."""

    lo: float = float("inf")
    hi: float = float("-inf")
    seen: int = 0
    chunks: List[torch.Tensor] = field(default_factory=list)
    kept: int = 0

    def add(self, x: torch.Tensor, name: str, gen: torch.Generator) -> None:
        flat = x.detach().reshape(-1).float().cpu()
        if flat.numel() == 0:
            return
        lo, hi = float(flat.min()), float(flat.max())
        if not (torch.isfinite(torch.tensor([lo, hi])).all()):
            raise MixQuantError(f"the input of layer '{name}' is NaN/Inf on the calibration images: "
                                "its activation range cannot be calibrated")
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        self.seen += flat.numel()
        if flat.numel() > PER_BATCH:
            flat = flat[torch.randint(flat.numel(), (PER_BATCH,), generator=gen)]
        self.chunks.append(flat.clone())
        self.kept += flat.numel()
        if self.kept > 2 * SAMPLE_CAP:  # thin out to the cap: memory stays bounded
            self._thin(gen)

    def _thin(self, gen: torch.Generator) -> None:
        all_ = torch.cat(self.chunks)
        if all_.numel() > SAMPLE_CAP:
            all_ = all_[torch.randperm(all_.numel(), generator=gen)[:SAMPLE_CAP]]
        self.chunks, self.kept = [all_], all_.numel()

    def sample(self, gen: torch.Generator) -> torch.Tensor:
        self._thin(gen)
        return self.chunks[0]


def quant_mse(x: torch.Tensor, lo: float, hi: float, bits: int) -> float:
    """Mean squared error of ``x`` on the ``bits``-bit grid over [lo, hi] (activations.act_qparams)."""
    scale, zp = act_qparams(lo, hi, bits)
    return float(torch.mean((fake_quantize_act(x, scale, zp, bits) - x) ** 2))


def choose_range(stats_lo: float, stats_hi: float, sample: torch.Tensor, bits: int, method: str) -> Tuple[float, float]:
    """The (lo, hi) that ``method`` chooses from the exact min/max and a sample of the values."""
    if method == "minmax" or stats_lo == stats_hi:
        return stats_lo, stats_hi
    if method == "percentile":
        q = torch.tensor([(100.0 - PERCENTILE) / 100.0, PERCENTILE / 100.0], dtype=torch.float64)
        lo, hi = torch.quantile(sample.double(), q).tolist()
        return max(stats_lo, lo), min(stats_hi, hi)
    if method == "mse":
        best, best_err = (stats_lo, stats_hi), quant_mse(sample, stats_lo, stats_hi, bits)
        for i in range(1, MSE_GRID):
            a = i / MSE_GRID
            err = quant_mse(sample, a * stats_lo, a * stats_hi, bits)
            if err < best_err:
                best, best_err = (a * stats_lo, a * stats_hi), err
        return best
    raise MixQuantError(f"unknown activation range method '{method}'; choose one of {', '.join(ACT_METHODS)}")


def check_act_settings(bits: int, method: str) -> None:
    if int(bits) not in ACT_BITS:
        raise MixQuantError(f"activation bits must be one of {', '.join(map(str, ACT_BITS))}, got {bits}")
    if method not in ACT_METHODS:
        raise MixQuantError(f"unknown activation range method '{method}'; choose one of {', '.join(ACT_METHODS)}")


def act_layers(model: nn.Module, names: Sequence[str], keep_float: Sequence[str] = ()) -> Tuple[List[str], List[str]]:
    """(layers whose input is quantized, layers kept float): every name that is a module of
    ``model`` (a Conv/Linear), minus ``keep_float``; an attention projection held as a parameter
    (``...in_proj_weight``: no module sees its input alone) stays float."""
    modules = dict(model.named_modules())
    unknown = [n for n in keep_float if n not in names]
    if unknown:
        raise MixQuantError(f"--act-keep-float names '{unknown[0]}', which is not a quantizable layer of this model")
    quantized = [n for n in names if n in modules and n not in keep_float]
    return quantized, [n for n in names if n not in quantized]


def output_points(model: nn.Module, names: Sequence[str], image_shape,
                  floats: Sequence[str] = ()) -> Dict[str, Tuple[str, bool, Optional[tuple]]]:
    """models/act_points.fusion_points for the layers ``names`` (quantized inputs; ``floats``: kept
    float); {} for a model that cannot be traced to ONNX (its activations are then quantized at the
    layers' inputs only)."""
    from ..models.act_points import fusion_points
    from ..models.layers import state_key
    from ..models.onnx_graph import OnnxExportError, float_graph

    try:
        graph = float_graph(model, tuple(image_shape)).graph
    except OnnxExportError:
        return {}
    modules = {n for n, _ in model.named_modules() if n}
    floats = [n for n in floats if n in modules]  # an attention parameter has no module of its own
    return fusion_points(graph, modules, {n: state_key(model, n) for n in names}, {n: state_key(model, n) for n in floats})


def calibrate(model: nn.Module, layer_names: Sequence[str], calib: EvalTensors, bits: int = 8,
              method: str = DEFAULT_ACT_METHOD, progress: Progress = None, keep_float: Sequence[str] = (),
              device: str | torch.device = "cpu", batch_size: int = BATCH, outputs: bool = True) -> ActQuant:
    """Each listed layer's input range by ``method`` over the calibration images (float model;
    hooks removed afterwards, even on error). ``keep_float`` layers (and attention parameters)
    get no range: their inputs stay float. ``outputs``: add the output points (see the docstring)."""
    check_act_settings(bits, method)
    if len(calib) == 0:
        raise DatasetError("the calibration set is empty: activation ranges need at least one image")
    names, floats = act_layers(model, layer_names, keep_float)
    modules = dict(model.named_modules())
    stats: Dict[str, _Stats] = {n: _Stats() for n in names}
    points = output_points(model, names, calib.image_shape, floats) if outputs else {}
    out_stats: Dict[str, _Stats] = {m: _Stats() for m, (_, shared, _b) in points.items() if not shared}
    calls: Dict[str, int] = {m: 0 for m in points}
    gen = torch.Generator().manual_seed(0)
    device = torch.device(device)
    was_training = model.training

    def hook_for(name: str):
        def hook(_module, args):
            stats[name].add(args[0], name, gen)
        return hook

    def output_hook_for(module: str):
        def hook(_module, _args, out):
            calls[module] += 1
            if module in out_stats and isinstance(out, torch.Tensor):
                bounds = points[module][2]  # the values the activation after it leaves
                out_stats[module].add(out if bounds is None else out.clamp(*bounds), module, gen)
        return hook

    handles = [modules[n].register_forward_pre_hook(hook_for(n)) for n in names]
    handles += [modules[m].register_forward_hook(output_hook_for(m)) for m in points]
    forwards = 0
    try:
        model.eval()
        n = len(calib)
        done = 0
        with torch.no_grad():
            for x, _ in calib.batches(batch_size):
                x = x.to(device)
                if not torch.isfinite(x).all():
                    raise MixQuantError("a calibration image holds NaN/Inf values: its activation ranges cannot be calibrated")
                model(x)
                forwards += 1
                done += len(x)
                if progress:
                    progress(done, n, "activation ranges")
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    ranges = {}
    for name in names:
        s = stats[name]
        if s.seen == 0:  # a layer the forward pass never reached keeps float inputs
            floats.append(name)
            continue
        lo, hi = choose_range(s.lo, s.hi, s.sample(gen), bits, method)
        ranges[name] = (float(lo), float(hi))
    out_ranges = {}
    for module, (layer, shared, _bounds) in points.items():
        if calls[module] != forwards or layer not in ranges:  # runs twice per forward, or not at all
            continue
        if shared:
            out_ranges[module] = (layer,) + tuple(ranges[layer])
        elif out_stats[module].seen:
            s = out_stats[module]
            out_ranges[module] = (layer,) + tuple(float(v) for v in choose_range(s.lo, s.hi, s.sample(gen), bits, method))
    degenerate = sorted(name for name, (lo, hi) in ranges.items() if lo == hi)
    info = {"images": n, "percentile": PERCENTILE if method == "percentile" else None,
            "keep_float": [n_ for n_ in layer_names if n_ in set(floats)]}
    if degenerate:
        info["constant_inputs"] = degenerate
    return ActQuant(int(bits), method, ranges, info, out_ranges)


def calibration_notes(acts: ActQuant) -> List[str]:
    """What a user should know about a calibration: one image only, constant inputs."""
    notes = []
    images = acts.calibration.get("images")
    if images == 1:
        notes.append("activation ranges were calibrated on a single image: they may not fit other images "
                     "(use more calibration images)")
    constant = acts.calibration.get("constant_inputs") or []
    if constant:
        notes.append(f"{len(constant)} layer input(s) were constant on the calibration images (zero range), "
                     f"e.g. '{constant[0]}': any other value is clipped to it")
    return notes
