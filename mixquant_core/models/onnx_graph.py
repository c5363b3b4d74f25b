"""A torch model as an ONNX graph whose every state tensor is a named initializer.

Used by the ONNX Runtime evaluation engine (stage 4) and the ONNX export (stage 6). The graph is
traced once per (model, input shape) and process and cached; the engines then replace initializers
(the planned layers' weights) by name. So the export must keep each layer's weight as its own
initializer, named as in ``state_dict()``: the legacy TorchScript exporter in PRESERVE mode
(eval mode is kept, but no eval peephole) with constant folding off does not fold BatchNorm into
the convolutions; ONNX Runtime folds it when it builds a session, from the replaced weights.

Where the forward turns a traced tensor into a Python number or boolean, the trace keeps the value
of the run it recorded and warns (TracerWarning). Transformers do it for shape arithmetic (timm's
``_assert(H == img_size)``, window partitions): right at the traced image size, the only one the
graph is run at. Python control flow on pixel values or on the batch size is wrong on other inputs.
So a trace that warned is checked against the model on probe inputs that would flip such values
(``trace_check``: zeros, positive, negative, random, batch 1 and 3) and refused on a mismatch; a
trace without warnings is used as it is. Weighed against (measured on torch 2.14, 2 loaded cores):

* refusing every TracerWarning (before): refuses every timm and torchvision transformer;
* telling shape-derived warnings from value-derived ones: a warning does not carry the tensor it
  is about, so that needs hooks into Tensor.__bool__/item/... or the tracer's internal graph, and
  it would still pass a frozen batch size (shape-derived, yet wrong: the batch axis is dynamic);
* the dynamo exporter (``dynamo=True``): keeps the names and BatchNorm and refuses value-dependent
  branches itself, but needs onnxscript (a new dependency), gives the engines and export/onnx.py
  another graph than the one they were built on, and takes 2-5x as long as a trace plus the check
  (vit_small_patch16_224: 8.3 s against 4.5 s; swin_tiny_patch4_window7_224: 23 s against 6.7 s).

The exporter's own value deduplication would merge equal state tensors into one initializer (at
init every LayerNorm weight is ones): exporting with the initializers as inputs turns it off.

A model that cannot be traced faithfully (an unsupported op, or Python control flow on tensor
values that the probes expose) raises ``OnnxExportError``.
"""
from __future__ import annotations

import io
import threading
import warnings
import weakref
from typing import Dict, List, Tuple

import torch
from torch import nn

from ..errors import MixQuantError, first_line
from .trace_check import trace_mismatch

ONNX_OPSET = 20  # the highest the TorchScript exporter writes; export/onnx.py converts upwards
INPUT_NAME, OUTPUT_NAME = "input", "logits"


class OnnxExportError(MixQuantError):
    """The model cannot be converted to an ONNX graph (unsupported op, data-dependent control flow)."""


# model -> input shape -> the traced graph (bytes) or, for a model that cannot be exported, the
# error's message (str).
_cache: "weakref.WeakKeyDictionary[nn.Module, Dict[Tuple[int, ...], bytes | str]]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _export_torchscript(model: nn.Module, example: torch.Tensor) -> Tuple[bytes, List[str]]:
    """The traced graph and the messages of the TracerWarnings the trace gave (values it froze)."""
    buf = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore")
        # Recorded, not raised: an error raised from the tracer's C code surfaces as a SystemError
        # and ends the export, and transformers warn for benign shape arithmetic (see the docstring).
        warnings.simplefilter("always", torch.jit.TracerWarning)
        # keep_initializers_as_inputs: else the exporter merges equal tensors of an eval-mode model
        # into one initializer (every LayerNorm's weight at init, BatchNorm statistics), and the
        # names the engines replace by would be gone. _initializers_not_inputs undoes the inputs.
        torch.onnx.export(model, (example,), buf, dynamo=False, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=ONNX_OPSET, training=torch.onnx.TrainingMode.PRESERVE,
                          do_constant_folding=False, keep_initializers_as_inputs=True)
    frozen = [str(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    return _initializers_not_inputs(buf.getvalue()), frozen


def _initializers_not_inputs(graph: bytes) -> bytes:
    """The graph without its initializers among its inputs: ONNX Runtime folds and fuses only
    initializers no caller can override (BatchNorm into convolutions, ...)."""
    import onnx

    proto = onnx.load_model_from_string(graph)
    names = {init.name for init in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in names]
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)
    return proto.SerializeToString()


def _trace(model: nn.Module, image_shape: Tuple[int, ...]) -> bytes:
    device = next(iter(model.parameters()), torch.zeros(0)).device  # trace where the model is (CPU or CUDA)
    example = torch.zeros((1, *image_shape), dtype=torch.float32, device=device)
    was_training = model.training
    model.eval()
    try:
        graph, frozen = _export_torchscript(model, example)
        # Only a trace that froze Python values can differ from the model: check those on probes.
        mismatch = trace_mismatch(model, graph, image_shape) if frozen else None
    except Exception as exc:  # the exporter raises many types (unsupported op, symbolic missing, ...)
        raise OnnxExportError(f"the model cannot be exported to ONNX: {type(exc).__name__}: {first_line(exc, 160)}") from None
    finally:
        model.train(was_training)
    if mismatch:
        raise OnnxExportError(f"the model cannot be exported to ONNX: its forward depends on tensor values "
                              f"(control flow the trace froze): {mismatch}")
    return graph


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


def float_onnx_bytes(model: nn.Module, image_shape: Tuple[int, ...]) -> bytes:
    """The float32 model as a runnable ONNX file (its current weights): the reference that exported
    plans are compared with (latency)."""
    proto = float_graph(model, image_shape)
    set_initializers(proto, state_initializers(model, proto))
    return proto.SerializeToString()
