"""A torch model as an ONNX graph whose every state tensor is a named initializer.

Used by the ONNX Runtime evaluation engine (stage 4) and the ONNX export (stage 6). The graph is
traced once per (model, input shape) and process and cached; the engines then replace initializers
(the planned layers' weights) by name. So the export must keep each layer's weight as its own
initializer, named as in ``state_dict()``: the legacy TorchScript exporter in PRESERVE mode
(eval mode is kept, but no eval peephole) with constant folding off does not fold BatchNorm into
the convolutions; ONNX Runtime folds it when it builds a session, from the replaced weights.

A model that cannot be traced faithfully (an unsupported op, or Python control flow on tensor
values, which tracing would silently freeze to one branch) raises ``OnnxExportError``.
"""
from __future__ import annotations

import io
import threading
import warnings
import weakref
from typing import Dict, Tuple

import torch
from torch import nn

from ..errors import MixQuantError, first_line

ONNX_OPSET = 20  # the highest the TorchScript exporter writes; export/onnx.py converts upwards
INPUT_NAME, OUTPUT_NAME = "input", "logits"


class OnnxExportError(MixQuantError):
    """The model cannot be converted to an ONNX graph (unsupported op, data-dependent control flow)."""


# model -> input shape -> the traced graph (bytes) or, for a model that cannot be exported, the
# error's message (str).
_cache: "weakref.WeakKeyDictionary[nn.Module, Dict[Tuple[int, ...], bytes | str]]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _trace(model: nn.Module, image_shape: Tuple[int, ...]) -> bytes:
    device = next(iter(model.parameters()), torch.zeros(0)).device  # trace where the model is (CPU or CUDA)
    example = torch.zeros((1, *image_shape), dtype=torch.float32, device=device)
    was_training = model.training
    model.eval()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # A TracerWarning means the trace froze a value-dependent branch: refuse, never run a wrong graph.
            warnings.simplefilter("error", torch.jit.TracerWarning)
            torch.onnx.export(model, (example,), buf, dynamo=False, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              opset_version=ONNX_OPSET, training=torch.onnx.TrainingMode.PRESERVE,
                              do_constant_folding=False)
    except torch.jit.TracerWarning as exc:
        raise OnnxExportError(f"the model cannot be exported to ONNX: its forward depends on tensor values "
                              f"(control flow): {first_line(exc, 120)}") from None
    except Exception as exc:  # the exporter raises many types (unsupported op, symbolic missing, ...)
        raise OnnxExportError(f"the model cannot be exported to ONNX: {type(exc).__name__}: {first_line(exc, 160)}") from None
    finally:
        model.train(was_training)
    return buf.getvalue()


def float_graph(model: nn.Module, image_shape: Tuple[int, ...]):
    """The float model as an ``onnx.ModelProto`` (a fresh copy; the trace itself is cached).

    Its initializers hold the weights the model had when it was first traced; callers put in the
    current ones (``state_initializers``) before running it."""
    import onnx

    key = tuple(int(d) for d in image_shape)
    with _lock:
        held = _cache.setdefault(model, {})
        if key not in held:
            try:
                held[key] = _trace(model, key)
            except OnnxExportError as exc:
                # The message only: the exception's traceback holds the model, and a value that
                # holds its key would keep the model alive in this weak-keyed cache for good.
                held[key] = str(exc)
        data = held[key]
        if isinstance(data, str):  # a model that failed once is not traced again
            raise OnnxExportError(data)
    return onnx.load_model_from_string(data)


def set_initializers(proto, tensors: Dict[str, torch.Tensor]) -> None:
    """Put float32 copies of ``tensors`` (name -> tensor) into ``proto``'s initializers of those names.

    A name the graph lacks, or a shape that differs, is an error: evaluating a graph that silently
    kept an old weight would report numbers for another model."""
    by_name = {init.name: init for init in proto.graph.initializer}
    for name, value in tensors.items():
        init = by_name.get(name)
        if init is None:
            raise OnnxExportError(f"the model's ONNX graph has no initializer '{name}' (the exporter folded or dropped it)")
        if list(init.dims) != list(value.shape):
            raise OnnxExportError(f"initializer '{name}' has shape {list(init.dims)} in the ONNX graph, "
                                  f"{list(value.shape)} in the model")
        array = value.detach().to("cpu", torch.float32).contiguous().numpy()
        init.ClearField("float_data")
        init.data_type = 1  # FLOAT
        init.raw_data = array.tobytes()


def state_initializers(model: nn.Module, proto) -> Dict[str, torch.Tensor]:
    """The model's current floating state tensors that the graph holds as float initializers."""
    names = {init.name for init in proto.graph.initializer if init.data_type == 1}
    return {k: v for k, v in model.state_dict().items() if k in names and v.is_floating_point()}
