"""ONNX Runtime on the CPU: 3-4x eager PyTorch for the small convnets this tool targets.

The float model is traced to ONNX once per (model, process) (``models.onnx_graph``); for each plan
the planned layers' fake-quantized weights, computed from the float weights with the same
quantizer functions as the torch engine, replace their initializers in a copy of that graph, and a
new session is built from it. Measured against overridable initializers (weights fed as inputs
on every run): rebuilding keeps ORT's graph optimisations (BatchNorm folded into the convolution,
Conv+activation fusion), which inputs would forbid, for ~70 ms per plan (benchmarks/bench_sweep.py).
The shared torch model is only read, never changed.
"""
from __future__ import annotations

import weakref
from typing import Callable, Dict, Optional

import numpy as np
import torch
from torch import nn

from ...data.image_sets import EvalTensors, usable_cores
from ...errors import MixQuantError
from ...models.layers import state_key, weight_ref
from ...models.onnx_graph import INPUT_NAME, OnnxExportError, float_graph, set_initializers, state_initializers
from ...quant.activations import act_qparams_table
from ...quant.recipe import Quantizer, acts_of, quantize_layer
from ..evaluate import Metrics, PerImageResults, Progress
from ..ort_session import ort_session
from ..statistics import EarlyStop
from .torch_engine import TorchEngine

# Images per run: on 2 cores (Lite0) ORT's throughput hardly depends on the batch (issue #12, quiet:
# 219 img/s at 4, 203 at 32; benchmarks/README, loaded: 15.9/15.8/16.8/18.6 at 4/8/16/32); 8 keeps
# activations small and the progress bar moving.
DEFAULT_BATCH = 8


def new_session(model_bytes: bytes, threads: Optional[int] = None, float_weights: bool = False):
    """An ORT CPU session with every graph optimisation, ``threads`` intra-op threads (default: cores).

    ``float_weights``: the graph's float weights are the fake-quantized ones and must stay exactly
    those. ONNX Runtime's WeightBiasQuantization otherwise quantizes the float weight (int8) and
    bias (int32) of every Conv/Gemm whose input comes out of a DequantizeLinear, for its QDQ
    fusions: other numbers than the torch engine's (a 4-bit grid is not on an int8 one)."""
    return ort_session(model_bytes, threads or usable_cores(), ["WeightBiasQuantization"] if float_weights else [])


def planned_weights(model: nn.Module, bits: Dict[str, int], quantizer: Quantizer) -> Dict[str, torch.Tensor]:
    """State-dict key (the graph's initializer name) -> fake-quantized weight for every planned layer
    (what ``plans.applied`` writes)."""
    refs = {name: weight_ref(model, name) for name in bits}
    return {refs[name].key: quantize_layer(quantizer, name, refs[name].tensor.detach().float().cpu(), int(b))
            for name, b in bits.items()}


def run_session(session, data: EvalTensors, batch_size: int, progress: Progress = None,
                early_stop: Optional[EarlyStop] = None) -> Metrics:
    """Metrics of an ONNX session (input ``input``, first output the logits) over ``data``; with
    ``early_stop``, the running top-1 is read every ``chunk`` images, as ``evaluate`` does."""
    input_name = session.get_inputs()[0].name
    results = PerImageResults(data, early_stop)
    buffer = torch.empty((batch_size, *data.image_shape), dtype=torch.float32)  # every batch's input, reused
    for pixels, y in data.pixel_batches(batch_size):
        x = data.to_inputs(pixels, buffer)
        logits = torch.from_numpy(session.run(None, {input_name: x.numpy()})[0])
        if not torch.isfinite(logits).all():
            raise MixQuantError("the model produced NaN/Inf outputs (a quantized layer blew up)")
        if results.add(logits, y, progress):
            break
    return results.metrics()


class OnnxRuntimeEngine:
    name = "onnxruntime"

    def __init__(self, batch_size: Optional[int] = None, threads: Optional[int] = None,
                 notify: Optional[Callable[[str], None]] = None):
        self.batch_size = batch_size or DEFAULT_BATCH
        self.threads = threads
        self.notify = notify
        # Models whose fallback was already announced. Weak references, not id()s: a freed model
        # leaves the set, so a new model that CPython puts at its address still gets its notice.
        self._told: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()

    def session_for(self, model: nn.Module, data: EvalTensors, bits: Optional[Dict[str, int]], quantizer: Quantizer):
        proto = float_graph(model, data.image_shape)
        tensors = state_initializers(model, proto)  # the model's current floats, whatever was traced
        if bits:
            tensors.update(planned_weights(model, bits, quantizer))
        set_initializers(proto, tensors)
        acts = acts_of(quantizer)
        if acts is not None:  # Q/DQ pairs on the layers' inputs, the grid of the torch engine's hooks
            from ...models.act_points import point_tensors
            from ...models.onnx_qdq import insert_act_qdq

            modules = {n for n, _ in model.named_modules() if n}
            insert_act_qdq(proto.graph, {name: state_key(model, name) for name in acts.ranges}, act_qparams_table(acts),
                           point_tensors(proto.graph, modules, acts))
        return new_session(proto.SerializeToString(), self.threads, float_weights=acts is not None)

    def evaluate(self, model: nn.Module, data: EvalTensors, bits: Optional[Dict[str, int]] = None,
                 quantizer: Quantizer = "asymmetric", progress: Progress = None,
                 early_stop: Optional[EarlyStop] = None) -> Metrics:
        try:
            session = self.session_for(model, data, bits, quantizer)
        except OnnxExportError as exc:
            if self.notify and model not in self._told:
                self._told.add(model)
                self.notify(f"{exc}; evaluating with torch instead")
            device = next(iter(model.parameters()), torch.zeros(0)).device  # leave the model where it is
            return TorchEngine(device).evaluate(model, data, bits, quantizer, progress, early_stop)
        return run_session(session, data, self.batch_size, progress, early_stop)
