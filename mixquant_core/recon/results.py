"""What a reconstruction returns (codes per layer, per-block error reports) and the block loss and
chunked forward every method shares (reconstruct.py's BRECQ, gptq.py's GPTQ)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from ..quant.codes import QuantizedLayer


@dataclass
class BlockReport:
    name: str
    layers: List[str]
    mse_nearest: float  # block output error with round-to-nearest codes (same scales)
    mse_learned: float  # ... with the learned rounding
    seconds: float


@dataclass
class ReconResult:
    layers: Dict[str, QuantizedLayer]
    blocks: List[BlockReport] = field(default_factory=list)
    config: Optional[object] = None  # the ReconConfig
    seconds: float = 0.0
    calib_images: int = 0
    notes: List[str] = field(default_factory=list)  # one line each, for the user (e.g. a layer GPTQ left at nearest)


def block_loss(pred: torch.Tensor, target: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """Squared error summed over channels, averaged over the batch and positions (BRECQ); channels
    are dim 1 of [N, C, ...] outputs, dim -1 of a transformer's tokens [N, T, C]."""
    return (pred - target).pow(2).sum(channel_dim).mean()


def forward_all(run, x: torch.Tensor, chunk: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([run(x[i:i + chunk]) for i in range(0, len(x), chunk)])
