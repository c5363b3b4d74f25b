"""Eager PyTorch: fake-quantize the shared model in place for the run, then restore it."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from ...data.image_sets import EvalTensors
from ...plans.plan import applied
from ...quant.recipe import Quantizer
from ..evaluate import Metrics, Progress, evaluate
from ..statistics import EarlyStop


class TorchEngine:
    name = "torch"

    def __init__(self, device: torch.device | str = "cpu", batch_size: Optional[int] = None):
        self.device = torch.device(device)
        self.batch_size = batch_size

    def evaluate(self, model: nn.Module, data: EvalTensors, bits: Optional[Dict[str, int]] = None,
                 quantizer: Quantizer = "asymmetric", progress: Progress = None,
                 early_stop: Optional[EarlyStop] = None) -> Metrics:
        """Metrics of ``model`` with the named layers at ``bits`` (None: float32); ``early_stop``
        ends a hopeless plan's evaluation early (``Metrics.stopped_early``)."""
        model = model.to(self.device)
        if bits is None:
            return evaluate(model, data, self.device, self.batch_size, progress, early_stop)
        with applied(model, bits, quantizer):
            return evaluate(model, data, self.device, self.batch_size, progress, early_stop)
