"""The ONNX Runtime CPU session every MixQuant-built model runs in: the evaluation engine's
(engines/onnxruntime_engine.py) and the latency measurements' (latency.py). Imports no torch,
so the latency child (latency_runner.py) starts in a fraction of a second."""
from __future__ import annotations

from typing import Sequence


def ort_session(model_bytes: bytes, threads: int, also_disabled: Sequence[str] = ()):
    """An ORT CPU session with every graph optimisation (but ``also_disabled``) and ``threads``
    intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no warnings on the user's terminal
    # An exported file's DequantizeLinear + MatMul (transformers' Linear layers) is fused into
    # MatMulNBits, which by default rounds the activations to int8 (accuracy level 4): logits ~1%
    # off the fake-quantized model's. Level 1 computes in float32, as torch does.
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    # ONNX Runtime 1.32 cannot load a 2-bit DequantizeLinear -> Transpose -> MatMul (an exported
    # transformer's Linear layer, K >= 32) with its TransposeOptimizer on: it moves the Transpose
    # onto the uint2/int2 codes, and constant folding fails on them ("Element type mismatch").
    # Off, it costs nothing measurable (Lite0 and ViT-S/16 float graphs: same speed within noise).
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=["TransposeOptimizer", *also_disabled])
