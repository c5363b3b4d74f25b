"""Top-1 / top-5 / mean cross-entropy of a model on preprocessed evaluation tensors."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .data import EvalTensors
from .errors import MixQuantError

Progress = Optional[Callable[[int, int, str], None]]


@dataclass(frozen=True)
class Metrics:
    top1: float  # percent
    top5: float  # percent
    loss: float  # mean cross-entropy
    images: int

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(name: str = "auto") -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MixQuantError("--device cuda asked for, but no CUDA GPU is available here (use cpu or auto)")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise MixQuantError(f"unknown device '{name}'; use auto, cpu or cuda")
    return torch.device(name)


def default_batch_size(device: torch.device) -> int:
    return 256 if device.type == "cuda" else 50


def evaluate(model: nn.Module, data: EvalTensors, device: torch.device | str = "cpu",
             batch_size: Optional[int] = None, progress: Progress = None) -> Metrics:
    """Evaluate ``model`` (already on ``device``) on ``data``."""
    device = torch.device(device)
    batch_size = batch_size or default_batch_size(device)
    correct1 = correct5 = 0
    loss_sum = 0.0
    n = len(data)
    done = 0
    with torch.inference_mode():
        for x, y in data.batches(batch_size):
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            logits = model(x).float()
            if not torch.isfinite(logits).all():
                raise MixQuantError("the model produced NaN/Inf outputs (a quantized layer blew up)")
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top5 == y[:, None]
            correct1 += int(hits[:, 0].sum())
            correct5 += int(hits.any(dim=1).sum())
            done += len(y)
            if progress:
                progress(done, n, "evaluating")
    return Metrics(100.0 * correct1 / n, 100.0 * correct5 / n, loss_sum / n, n)
