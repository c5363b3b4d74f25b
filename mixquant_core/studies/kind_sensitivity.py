"""Section 6 of the paper: which kind of layer is most sensitive to quantization.

Two views: accuracy when only the layers of one kind (first_conv, kxk_conv, 1x1_conv, depthwise,
fc; for transformers patch_embed, attn_qkv, attn_out, mlp_in, mlp_out, head: models/layers.py KINDS)
drop to b bits while every other layer stays at 8 bits, and the single layer with the highest
relative quantization error (RQE) at each bit-width (the paper's Table 4).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np

from ..data.image_sets import EvalTensors
from ..models.layers import KINDS, LayerInfo
from ..quant.qe import BASE_BITS, QETable

Progress = Optional[Callable[[int, int, str], None]]


@dataclass(frozen=True)
class KindResult:
    """Accuracy with only the layers of ``kind`` at ``bits`` bits (all others at 8)."""

    kind: str
    bits: int
    layers: int  # how many layers of that kind
    params: int  # their weights
    top1: float
    top5: float
    loss: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SensitiveLayer:
    """The layer with the highest RQE at one bit-width."""

    bits: int
    name: str
    kind: str
    params: int
    rqe: float
    qe: float

    def to_dict(self) -> dict:
        return asdict(self)


def kinds_present(layers: Sequence[LayerInfo]) -> List[str]:
    """The layer kinds this model has, in the canonical KINDS order."""
    seen = {layer.kind for layer in layers}
    return [k for k in KINDS if k in seen]


def bits_for_kind(layers: Sequence[LayerInfo], kind: str, bits: int, base: int = BASE_BITS) -> np.ndarray:
    """``bits`` for every layer of ``kind``, ``base`` for all others (model order)."""
    return np.array([int(bits) if layer.kind == kind else int(base) for layer in layers], dtype=np.int64)


def kind_sensitivity(ev, data: EvalTensors, bits: Sequence[int], kinds: Optional[Sequence[str]] = None,
                     progress: Progress = None) -> List[KindResult]:
    """Evaluate every (kind, bit-width) pair on ``data`` through ``ev`` (an Evaluations, whose Workspace caches
    each distinct plan, so the all-8-bit plan and repeated runs cost nothing).

    ``keep_first_last`` is deliberately ignored: this is an ablation of one kind at a time.
    """
    ws = ev.ws
    kinds = list(kinds) if kinds is not None else kinds_present(ws.layers)
    bits = sorted({int(b) for b in bits}, reverse=True)
    jobs = [(k, b) for k in kinds for b in bits]
    out = []
    for i, (kind, b) in enumerate(jobs):
        if progress:
            progress(i, len(jobs), f"{kind} at {b} bits")
        members = [layer for layer in ws.layers if layer.kind == kind]
        m = ev.evaluate_bits(bits_for_kind(ws.layers, kind, b), data)
        out.append(KindResult(kind, b, len(members), sum(layer.params for layer in members), m.top1, m.top5, m.loss))
    if progress:
        progress(len(jobs), len(jobs), "done")
    return out


def most_sensitive_by_rqe(table: QETable, bits: Optional[Sequence[int]] = None) -> List[SensitiveLayer]:
    """For each bit-width (descending), the layer whose RQE is highest."""
    rqe = table.rqe
    out = []
    for b in (table.bits if bits is None else sorted({int(x) for x in bits}, reverse=True)):
        j = table.bits.index(int(b))
        i = int(np.argmax(rqe[:, j]))
        layer = table.layers[i]
        out.append(SensitiveLayer(int(b), layer.name, layer.kind, layer.params, float(rqe[i, j]), float(table.qe[i, j])))
    return out
