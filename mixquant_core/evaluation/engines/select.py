"""Which engine evaluates: ``auto`` is ONNX Runtime on the CPU and torch on CUDA (already fast there)."""
from __future__ import annotations

import importlib.util
from typing import Callable, Dict, Optional, Protocol

import torch
from torch import nn

from ...data.image_sets import EvalTensors
from ...errors import MixQuantError
from ..evaluate import Metrics, Progress
from ..statistics import EarlyStop
from ...quant.recipe import Quantizer

ENGINES = ("auto", "torch", "onnxruntime")


class Engine(Protocol):
    """What every engine offers; TorchEngine and OnnxRuntimeEngine implement exactly this signature
    (tests/test_engines.py compares them), so a caller may pass any argument to either."""

    name: str

    def evaluate(self, model: nn.Module, data: EvalTensors, bits: Optional[Dict[str, int]] = None,
                 quantizer: Quantizer = "asymmetric", progress: Progress = None,
                 early_stop: Optional[EarlyStop] = None) -> Metrics:
        """Metrics of ``model`` with the named layers at ``bits`` (None: float32); ``early_stop``
        ends a hopeless plan's evaluation early (``Metrics.stopped_early``)."""
        ...


def get_engine(name: str = "auto", device: torch.device | str = "cpu", notify: Optional[Callable[[str], None]] = None,
               batch_size: Optional[int] = None) -> Engine:
    from .onnxruntime_engine import OnnxRuntimeEngine
    from .torch_engine import TorchEngine

    device = torch.device(device)
    name = (name or "auto").lower()
    if name not in ENGINES:
        raise MixQuantError(f"unknown engine '{name}'; choose one of {', '.join(ENGINES)}")
    has_ort = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
    if name == "onnxruntime" and not has_ort:
        raise MixQuantError("--engine onnxruntime needs the onnxruntime and onnx packages (pip install onnxruntime onnx)")
    if name == "auto":
        name = "onnxruntime" if device.type == "cpu" and has_ort else "torch"
    if name == "onnxruntime":
        if device.type != "cpu" and notify:
            notify("the onnxruntime engine runs on the CPU, not on the chosen device")
        return OnnxRuntimeEngine(batch_size, notify=notify)
    return TorchEngine(device, batch_size)
