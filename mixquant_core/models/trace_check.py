"""Does a traced ONNX graph compute what the torch model computes? Checked on probe inputs.

A trace records one run: where the forward turned a traced tensor into a Python number or boolean
(the tracer's TracerWarning), the graph holds the value that run had. For shape arithmetic at the
traced image size that is the right value (transformers assert ``H == img_size``, split into
windows, ...): the graph is only ever run at that H and W. For a value of the pixels or of the batch
size it is wrong on other inputs. The probes are inputs that flip such values: all zeros, all
positive, all negative and random pixels, one image each (a branch on the sign or size of an
activation takes another way on one of them), and the three kinds in one batch of 3 (the trace ran
at batch 1: a frozen batch size fails or mixes the images). The graph is refused unless ONNX
Runtime's logits equal torch's on every probe. 7 images, run by both, once per model and image
size: 5 s for torchvision's vit_b_16 on 2 cores.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import numpy as np
import torch
from torch import nn

# Largest allowed |ONNX Runtime - torch| logit difference, relative to the largest |logit| (at least
# 1). Float summation order makes ~1e-6 of it on the CPU; a frozen branch or batch size makes O(1).
# On a GPU, TF32 convolutions and matmuls make ~1e-3.
TOLERANCE = {"cpu": 1e-3, "other": 2e-2}


def probe_inputs(image_shape: Tuple[int, ...]) -> Iterator[Tuple[str, torch.Tensor]]:
    """(name, batch of images) for each probe; fixed seeds, so a verdict is the same every run."""
    g = torch.Generator().manual_seed(0)
    one = (1, *image_shape)
    # Normalised images span about [-2.1, 2.6]: probes of that size.
    positive, negative = torch.rand(one, generator=g) * 2.5, torch.rand(one, generator=g) * -2.5
    random = torch.randn(one, generator=g)
    yield "zeros", torch.zeros(one)
    yield "positive", positive
    yield "negative", negative
    yield "random", random
    # The three kinds in one batch of 3: a frozen batch size breaks a Reshape or mixes the images.
    yield "batch of 3", torch.cat([positive, negative, torch.randn(one, generator=g)])


def _cpu_session(graph: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # as the engine runs it
    options.log_severity_level = 4  # fatal only: a probe a frozen graph fails on is no error to print
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def _torch_logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    out = model(x)
    if isinstance(out, (tuple, list)):  # the engines read the first output
        out = out[0]
    return out.detach().float().cpu().numpy()


def _difference(got: np.ndarray, want: np.ndarray, tolerance: float) -> Optional[str]:
    """Why ``got`` is not ``want`` within ``tolerance`` (relative to the logits' scale), or None."""
    if got.shape != want.shape:
        return f"logits of shape {list(got.shape)}, torch's are {list(want.shape)}"
    if not np.array_equal(np.isfinite(got), np.isfinite(want)):
        return "non-finite logits where torch's are finite (or the reverse)"
    finite = np.isfinite(want)
    diff = float(np.abs(got - want)[finite].max(initial=0.0))
    scale = max(1.0, float(np.abs(want)[finite].max(initial=0.0)))
    if diff > tolerance * scale:
        return f"logits differ from torch's by {diff:.3g} (largest |logit| {scale:.3g})"
    return None


def trace_mismatch(model: nn.Module, graph: bytes, image_shape: Tuple[int, ...]) -> Optional[str]:
    """Where the graph's logits differ from the eval-mode ``model``'s on a probe, as one line; None
    when they agree on all. The model is only read (call it in eval mode)."""
    device = next(iter(model.parameters()), torch.zeros(0)).device
    tolerance = TOLERANCE["cpu" if device.type == "cpu" else "other"]
    session = _cpu_session(graph)  # a graph ONNX Runtime cannot load raises: not a question of values
    input_name = session.get_inputs()[0].name
    for name, x in probe_inputs(image_shape):
        with torch.inference_mode():
            want = _torch_logits(model, x.to(device))
        try:
            got = session.run(None, {input_name: x.numpy()})[0]
        except Exception as exc:  # a frozen batch size typically breaks a Reshape at batch 3
            return f"ONNX Runtime fails on the {name} probe ({type(exc).__name__})"
        why = _difference(np.asarray(got), want, tolerance)
        if why:
            return f"on the {name} probe its {why}"
    return None
