"""How a plan's layers are quantized beyond their bit-widths: a ``Recipe``.

A plan is layer -> bit-width; what those bits turn into is the recipe: the weight quantizer's
scheme (a name of ``QUANTIZERS``), optionally the per-layer clipping ratios a calibration chose
for the weight ranges (``WeightRanges``: loss-aware ranges, issue #22), and optionally activation
quantization with its calibrated input ranges (``ActQuant``, issue #20).

Everything that evaluates, caches or stores a plan's result takes a "quantizer", which is either
a scheme name (as before: weights only, ranges from the weights alone) or a Recipe. A Recipe is
frozen, picklable (Ray ships it to the workers) and hashed by its content, so two recipes with
the same calibrated numbers share cache entries and store rows, and different ones never do.
``quantize_layer`` is the one place a layer's weights are fake-quantized under a recipe.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Mapping, Optional, Tuple, Union

import torch

from .activations import ActQuant
from .quantizers import fake_quantize, fake_quantize_with_ratios, get_quantizer


@dataclass(frozen=True, eq=False)
class WeightRanges:
    """Per layer and bit-width, the clipping ratio of each row of the layer's grid (one row per
    output channel for per-channel schemes, one for per-tensor ones), chosen by ``method`` on a
    calibration set described by ``calibration``. A (layer, bits) pair without an entry gets the
    scheme's own range (min/max or MSE)."""

    method: str
    ratios: Mapping[Tuple[str, int], Tuple[float, ...]]
    calibration: Mapping[str, object] = field(default_factory=dict)

    def ratios_for(self, name: str, bits: int) -> Optional[torch.Tensor]:
        got = self.ratios.get((name, int(bits)))
        return None if got is None else torch.tensor(got, dtype=torch.float32)

    def to_dict(self) -> dict:
        return {"method": self.method, "calibration": dict(self.calibration),
                "ratios": [[name, b, list(r)] for (name, b), r in sorted(self.ratios.items())]}


@dataclass(frozen=True, eq=False)
class Recipe:
    """A weight scheme plus what calibration decided (see the module docstring)."""

    quantizer: str
    weight_ranges: Optional[WeightRanges] = None
    acts: Optional[ActQuant] = None

    def __post_init__(self):
        get_quantizer(self.quantizer)  # unknown schemes fail here, with the usual message

    def to_dict(self) -> dict:
        return {"quantizer": self.quantizer,
                "weight_ranges": None if self.weight_ranges is None else self.weight_ranges.to_dict(),
                "acts": None if self.acts is None else self.acts.to_dict()}

    @property
    def digest(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def plain(self) -> bool:
        """Nothing calibrated: the recipe means exactly its scheme name."""
        return self.weight_ranges is None and self.acts is None

    def __str__(self) -> str:
        """The label stores and tables show: the scheme, then what calibration added, then the
        content hash (two calibrations of the same kind never share a label)."""
        if self.plain:
            return self.quantizer
        parts = [self.quantizer]
        if self.weight_ranges is not None:
            parts.append(f"ranges-{self.weight_ranges.method}")
        if self.acts is not None:
            parts.append(f"a{self.acts.bits}-{self.acts.method}")
        return "+".join(parts) + f"@{self.digest}"

    def __eq__(self, other) -> bool:
        return isinstance(other, Recipe) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.digest)


Quantizer = Union[str, Recipe]


def scheme_of(quantizer: Quantizer) -> str:
    """The weight scheme name (what size accounting, export containers and plans record)."""
    return quantizer.quantizer if isinstance(quantizer, Recipe) else quantizer


def acts_of(quantizer: Quantizer) -> Optional[ActQuant]:
    return quantizer.acts if isinstance(quantizer, Recipe) else None


def label_of(quantizer: Quantizer) -> str:
    """Text key for caches and the results store: a plain scheme's label is its name, as before."""
    return str(quantizer)


def canonical(quantizer: Quantizer) -> Quantizer:
    """A Recipe with nothing calibrated is its scheme name (one cache/store key for both spellings)."""
    return quantizer.quantizer if isinstance(quantizer, Recipe) and quantizer.plain else quantizer


def ratios_of(quantizer: Quantizer, name: str, bits: int) -> Optional[torch.Tensor]:
    """The calibrated clipping ratios of layer ``name`` at ``bits``, or None: the scheme's own range."""
    if isinstance(quantizer, Recipe) and quantizer.weight_ranges is not None:
        return quantizer.weight_ranges.ratios_for(name, int(bits))
    return None


def quantize_layer(quantizer: Quantizer, name: str, w: torch.Tensor, bits: int) -> torch.Tensor:
    """Layer ``name``'s weights ``w`` (float32) fake-quantized to ``bits`` under ``quantizer``."""
    ratios = ratios_of(quantizer, name, bits)
    if ratios is not None:
        return fake_quantize_with_ratios(w, int(bits), scheme_of(quantizer), ratios)
    return fake_quantize(w, int(bits), scheme_of(quantizer))
