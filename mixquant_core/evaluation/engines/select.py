"""Which engine evaluates: ``auto`` is ONNX Runtime on the CPU and torch on CUDA (already fast there)."""
from __future__ import annotations

import importlib.util
from typing import Callable, Optional, Protocol

import torch

from ...errors import MixQuantError

ENGINES = ("auto", "torch", "onnxruntime")


class Engine(Protocol):
    name: str

    def evaluate(self, model, data, bits=None, quantizer="asymmetric", progress=None): ...


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
