"""CUDA correctness check of the fast QE table (Triton, and the torch fallback) against the plain
loop; run on a GPU machine: ``python benchmarks/check_cuda.py``. Exits 1 on a mismatch.

Compared within a relative tolerance of 1e-4 (the fast kernels compute rint(w * (1/s)) where the
reference computes round(w / s); see mixquant_core/quant/kernels/numba_cpu.py)."""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mixquant_core.quant import kernels  # noqa: E402
from mixquant_core.quant.kernels import triton_cuda  # noqa: E402
from mixquant_core.models.registry import build_model  # noqa: E402
from mixquant_core.quant.qe import _layer_qe_reference, qe_table  # noqa: E402

BITS = (8, 7, 6, 5, 4, 3, 2)
QUANTIZERS = ("asymmetric", "symmetric", "per-channel")
TOL = 1e-4


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30))) if b.size else 0.0


def tensors(gen):
    out = [torch.randn(64, 32, 3, 3, generator=gen), torch.randn(1000, 1280, generator=gen) * 0.02,
           torch.randn(5, generator=gen), torch.full((8, 4), 0.25), torch.zeros(16, 1, 3, 3),
           torch.randn(3, 1_000_003, generator=gen), torch.rand(7, 9000, generator=gen) + 1.0]
    dw = torch.randn(32, 1, 3, 3, generator=gen)
    dw[5] = 0.0  # an all-zero output channel, as in EfficientNet-Lite's depthwise convs
    return out + [dw]


def main():
    assert torch.cuda.is_available(), "no CUDA device"
    print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| triton available:", triton_cuda.available())
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for trial in range(3):
        ws = tensors(gen)
        for q in QUANTIZERS:
            ref = np.array([_layer_qe_reference(w, BITS, q) for w in ws])
            ref_ms = np.array([float((w.double() ** 2).mean()) for w in ws])
            cuda_ws = [w.cuda() for w in ws]
            qe, ms, ok = kernels.qe_rows(cuda_ws, BITS, q)  # Triton
            saved = triton_cuda.available
            triton_cuda.available = lambda: False
            try:
                qe_t, ms_t, ok_t = kernels.qe_rows(cuda_ws, BITS, q)  # torch fallback on CUDA
            finally:
                triton_cuda.available = saved
            r = max(rel(qe, ref), rel(ms, ref_ms), rel(qe_t, ref), rel(ms_t, ref_ms))
            worst = max(worst, r)
            print(f"random trial {trial} {q:<11}: triton {rel(qe, ref):.1e} torch-cuda {rel(qe_t, ref):.1e} "
                  f"mean_sq {rel(ms, ref_ms):.1e} ok {bool(ok.all() and ok_t.all())}")
    bad = [w.clone().cuda() for w in tensors(gen)[:3]]
    bad[1][3, 7] = float("nan")
    qe, ms, ok = kernels.qe_rows(bad, BITS, "asymmetric")
    print("NaN layer flagged:", list(ok) == [True, False, True])
    worst = max(worst, 0.0 if list(ok) == [True, False, True] else 1.0)
    for name in ("resnet18", "mobilenet_v2", "efficientnet_lite0"):
        model = build_model(name, pretrained=False).model
        for q in QUANTIZERS:
            ref = qe_table(model, q, method="reference")  # on the CPU
            fast = qe_table(model.cuda(), q, device="cuda")
            model.cpu()
            r = max(rel(fast.qe, ref.qe), rel(fast.mean_sq, ref.mean_sq))
            worst = max(worst, r)
            print(f"{name:<18} {q:<11}: fast (cuda) vs reference (cpu) max rel diff {r:.1e}")
    print(f"WORST max relative difference: {worst:.2e} -> {'OK' if worst <= TOL else 'MISMATCH'}")
    return 0 if worst <= TOL else 1


if __name__ == "__main__":
    sys.exit(main())
