"""Sensitivity of activations (issue #20): per layer, what quantizing only that layer's input costs.

Each row is the float32 model with one layer's input on its calibrated 8-bit grid (weights stay
float32), against float32 itself on the same images: the top-1 drop and the rise of the mean
cross-entropy (the finer signal: a single layer's 8-bit input rarely moves top-1 by a whole image).
A layer whose input costs much is one to keep float (``--act-keep-float``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, List, Optional

from ..data.image_sets import EvalTensors
from ..errors import MixQuantError
from ..quant.activations import ActQuant
from ..quant.recipe import Recipe

Progress = Optional[Callable[[int, int, str], None]]


@dataclass(frozen=True)
class ActSensitivity:
    """Accuracy with only ``name``'s input quantized (its range [lo, hi]), vs float32."""

    name: str
    kind: str
    lo: float
    hi: float
    top1: float
    top1_drop: float  # float32's top-1 minus this one, in points
    loss: float
    loss_increase: float  # this mean cross-entropy minus float32's

    def to_dict(self) -> dict:
        return asdict(self)


def act_sensitivity(ev, data: EvalTensors, acts: Optional[ActQuant] = None,
                    progress: Progress = None) -> List[ActSensitivity]:
    """One row per layer with an activation range (model order), each evaluated through ``ev``
    (an Evaluations: memory and the results store cache each one). ``acts``: the ranges to use
    (default: the Workspace's calibrated ones)."""
    ws = ev.ws
    if acts is None:
        if ws.act_bits is None:
            raise MixQuantError("activation sensitivity needs calibrated activation ranges: choose 8-bit activations "
                                "(--act-bits 8) and calibration images")
        acts = ws.recipe.acts
    kinds = {layer.name: layer.kind for layer in ws.layers}
    names = [layer.name for layer in ws.layers if layer.name in acts.ranges]
    evaluator = ws.evaluator
    reference = evaluator.evaluate(None, ws.quantizer, data, ev.store, False, None, ev.tally)
    rows = []
    for i, name in enumerate(names):
        if progress:
            progress(i, len(names), f"input of {name}")
        one = Recipe(ws.quantizer, acts=ActQuant(acts.bits, acts.method, {name: acts.ranges[name]}, acts.calibration))
        m = evaluator.evaluate({}, one, data, ev.store, False, None, ev.tally)
        lo, hi = acts.ranges[name]
        rows.append(ActSensitivity(name, kinds[name], float(lo), float(hi), m.top1, reference.top1 - m.top1,
                                   m.loss, m.loss - reference.loss))
    if progress:
        progress(len(names), len(names), "done")
    return rows
