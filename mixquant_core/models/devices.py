"""Which torch device a run uses, from the name a user typed (``--device``, the app's choice).

Stage 1, beside the model: evaluation, reconstruction and the workspace all place a model on a
device, so the one place that reads the name sits below them all.
"""
from __future__ import annotations

import torch

from ..errors import MixQuantError


def resolve_device(name: str = "auto") -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MixQuantError("--device cuda asked for, but no CUDA GPU is available here (use cpu or auto)")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise MixQuantError(f"unknown device '{name}'; use auto, cpu or cuda")
    return torch.device(name)
