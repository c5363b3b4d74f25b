"""The fast QE table (quant/kernels: numba on CPU, torch fallback; Triton on CUDA) against the plain
loop of Algorithm 1 (``method="reference"``).

Compared within a relative tolerance of 1e-4, not bit for bit: the fast kernels round
``w * (1/s)`` where the reference rounds ``w / s``, which can flip a rounding tie (both sides of a
tie are s/2 away, so the MSE barely moves), and they sum in a different order. Where the
reference finds a bit-width exact (QE 0), the fast path must find exactly 0 too: the search
treats a zero 8-bit QE specially.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from mixquant_core.quant import kernels
from mixquant_core.quant.kernels import numba_cpu, torch_rows, triton_cuda, work_items
from mixquant_core.errors import InvalidWeightsError, MixQuantError
from mixquant_core.quant.qe import DEFAULT_BITS, _layer_qe_reference, qe_table
from mixquant_core.quant.quantizers import MINMAX_QUANTIZERS as MINMAX  # what the numba/Triton kernels compute
from mixquant_core.quant.quantizers import QUANTIZERS as _SCHEMES

QUANTIZERS = tuple(_SCHEMES)  # MSE ones: the torch range search
RTOL = 1e-4
REPO = Path(__file__).resolve().parents[1]


def reference_rows(weights, quantizer, bits=DEFAULT_BITS):
    qe = np.array([_layer_qe_reference(w, bits, quantizer) for w in weights])
    mean_sq = np.array([float(torch.mean(w.double() ** 2)) for w in weights])
    return qe, mean_sq


def assert_matches_reference(weights, quantizer, bits=DEFAULT_BITS):
    qe, mean_sq, ok = kernels.qe_rows(weights, bits, quantizer)
    ref_qe, ref_ms = reference_rows(weights, quantizer, bits)
    assert ok.all()
    np.testing.assert_allclose(qe, ref_qe, rtol=RTOL, atol=0)
    np.testing.assert_allclose(mean_sq, ref_ms, rtol=RTOL, atol=0)
    assert np.array_equal(qe == 0, ref_qe == 0)  # exact cases stay exact


def degenerate_tensors():
    dw = torch.randn(8, 1, 3, 3)
    dw[3] = 0.0  # an all-zero output channel (EfficientNet-Lite's depthwise convs have some)
    return [
        torch.full((4, 3), 0.25),  # constant, exactly representable
        torch.full((3, 5), -1.7),  # constant, negative
        torch.zeros(6, 2, 3, 3),  # all zero
        dw,
        torch.tensor([[0.5]]),  # a single weight
        torch.randn(2, 3) * 1e-30,  # tiny: the scale is clamped at float32 eps
        torch.tensor([[0.5, 1.0, 2.0, 0.0, -3.0]]),
        torch.randn(1, 4097),  # one weight past a work-item block
        torch.randn(3, 5000),  # rows spanning two blocks
    ]


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_fast_matches_reference_on_degenerate_tensors(quantizer):
    assert_matches_reference(degenerate_tensors(), quantizer)


finite = st.floats(-4.0, 4.0, allow_nan=False, allow_subnormal=False, width=32)


@st.composite
def weight_tensors(draw):
    rows = draw(st.integers(1, 6))
    cols = draw(st.integers(1, 40))
    values = draw(st.lists(finite, min_size=rows * cols, max_size=rows * cols))
    w = torch.tensor(values, dtype=torch.float32).reshape(rows, cols)
    scale = draw(st.sampled_from([1.0, 1e-3, 1e3]))
    w = w * scale
    if draw(st.booleans()):  # snap to a grid: many exact and tied values
        w = torch.round(w * 4) / 4
    if rows > 1 and draw(st.booleans()):
        w[draw(st.integers(0, rows - 1))] = draw(st.sampled_from([0.0, 0.5, -2.0]))
    return w


@given(st.lists(weight_tensors(), min_size=1, max_size=4), st.sampled_from(QUANTIZERS),
       st.lists(st.integers(2, 8), min_size=1, max_size=7, unique=True))
def test_fast_matches_reference_property(weights, quantizer, bits):
    bits = tuple(sorted(set(bits) | {8}, reverse=True))
    assert_matches_reference(weights, quantizer, bits)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_torch_fallback_matches_reference(quantizer, monkeypatch):
    # what runs without numba on CPU, and on CUDA without Triton
    monkeypatch.setattr(numba_cpu, "HAVE_NUMBA", False)
    assert_matches_reference(degenerate_tensors() + [torch.randn(70, 1000)], quantizer)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_qe_table_fast_equals_reference_on_lite0(lite0, quantizer):
    # a real model: the five depthwise convs with an all-zero output channel, and every 4th of the
    # other layers (the plain loop over all 50 takes long on a busy 2-core machine)
    from mixquant_core.models.layers import find_layers

    modules = dict(lite0.model.named_modules())
    layers = find_layers(lite0.model)
    zero_channel = [l for l in layers if (modules[l.name].weight.detach().flatten(1).abs().sum(1) == 0).any()]
    assert len(zero_channel) == 5
    subset = [l for i, l in enumerate(layers) if l in zero_channel or i % 4 == 0]
    fast = qe_table(lite0.model, quantizer, layers=subset)
    ref = qe_table(lite0.model, quantizer, layers=subset, method="reference")
    np.testing.assert_allclose(fast.qe, ref.qe, rtol=RTOL)
    np.testing.assert_allclose(fast.mean_sq, ref.mean_sq, rtol=RTOL)
    assert fast.names == ref.names and fast.bits == ref.bits


def test_fast_path_names_the_nan_layer_and_handles_huge_weights(tiny_model):
    with torch.no_grad():
        tiny_model.conv.weight[1, 2, 0, 0] = float("inf")
    with pytest.raises(InvalidWeightsError, match="'conv'"):
        qe_table(tiny_model)
    with torch.no_grad():
        tiny_model.conv.weight[1, 2, 0, 0] = 3e19  # finite, but its square overflows float32
    fast, ref = qe_table(tiny_model), qe_table(tiny_model, method="reference")
    assert np.isfinite(fast.qe).all()
    np.testing.assert_allclose(fast.qe, ref.qe, rtol=RTOL)


def test_fast_path_reads_non_contiguous_and_half_weights(tiny_model):
    tiny_model = tiny_model.to(memory_format=torch.channels_last)
    tiny_model.fc.half()
    assert not tiny_model.conv.weight.is_contiguous()
    for quantizer in QUANTIZERS:
        fast = qe_table(tiny_model, quantizer)
        ref = qe_table(tiny_model, quantizer, method="reference")
        np.testing.assert_allclose(fast.qe, ref.qe, rtol=RTOL)


def test_progress_is_reported_per_layer_and_bad_method_is_rejected(tiny_model):
    seen = []
    table = qe_table(tiny_model, progress=lambda done, total, what: seen.append((done, total, what)))
    assert [s[0] for s in seen] == list(range(1, len(table.layers) + 1))
    assert seen[-1] == (len(table.layers), len(table.layers), table.names[-1])
    with pytest.raises(MixQuantError, match="unknown QE method"):
        qe_table(tiny_model, method="fastest")


def test_work_items_cover_every_weight_once():
    shapes = ((1, 10_000), (3, 9), (2, 4096), (5, 4097))
    items = work_items.work_items(shapes, 4096)
    for layer, (rows, cols) in enumerate(shapes):
        mine = items.layer == layer
        covered = np.zeros(rows * cols, dtype=int)
        for a, b in zip(items.start[mine], items.stop[mine]):
            assert 0 < b - a <= 4096
            covered[a:b] += 1
        assert (covered == 1).all()
    assert len(items.row_first_item) == sum(r for r, _ in shapes)


def test_cuda_unavailable_falls_back_cleanly(tiny_model, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: benchmarks/check_cuda.py checks the CUDA paths")
    assert triton_cuda.available() is False

    def no_triton(*args):
        raise AssertionError("the Triton path ran without CUDA")

    # CPU weights never reach the Triton kernels, whatever the requested method
    monkeypatch.setattr(triton_cuda, "qe_rows", no_triton)
    fast = qe_table(tiny_model, device="cpu")
    np.testing.assert_allclose(fast.qe, qe_table(tiny_model, method="reference").qe, rtol=RTOL)


@pytest.mark.slow
def test_triton_kernels_match_reference_in_interpreter():
    """The Triton kernels themselves, run by Triton's CPU interpreter (no GPU needed)."""
    pytest.importorskip("triton")
    code = (
        "import numpy as np, torch\n"
        "from mixquant_core.quant.kernels import triton_cuda\n"
        "from mixquant_core.quant.qe import _layer_qe_reference, DEFAULT_BITS\n"
        "torch.manual_seed(0)\n"
        "dw = torch.randn(8, 1, 3, 3); dw[2] = 0\n"
        "ws = [torch.randn(16, 3, 3, 3), torch.randn(5, 1500) * 0.01, dw, torch.full((3, 7), 0.25), torch.zeros(4, 4)]\n"
        "for q in ('asymmetric', 'symmetric', 'per-channel'):\n"
        "    qe, ms, ok = triton_cuda.qe_rows(ws, DEFAULT_BITS, q)\n"
        "    ref = np.array([_layer_qe_reference(w, DEFAULT_BITS, q) for w in ws])\n"
        "    np.testing.assert_allclose(qe, ref, rtol=1e-4, atol=0)\n"
        "    assert np.array_equal(qe == 0, ref == 0) and ok.all()\n"
        "print('ok')\n")
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_channels_last_and_strided_weights_give_the_same_rows():
    w = nn.Conv2d(4, 6, 3).weight.detach()
    others = [w.contiguous(memory_format=torch.channels_last), w.transpose(0, 1).contiguous().transpose(0, 1)]
    for quantizer in QUANTIZERS:
        a, _, _ = kernels.qe_rows([w], DEFAULT_BITS, quantizer)
        for other in others:
            assert not other.is_contiguous()
            b, _, _ = kernels.qe_rows([other], DEFAULT_BITS, quantizer)
            np.testing.assert_array_equal(a, b)


finite_f32 = st.floats(-1e6, 1e6, width=32) | st.sampled_from([0.0, -0.0, 1e-30, -1e-30, 1e-45, 3e19])


@pytest.mark.skipif(not numba_cpu.HAVE_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("quantizer", MINMAX)
@given(rows=st.lists(st.tuples(finite_f32, finite_f32), min_size=1, max_size=20))
def test_compiled_row_params_equal_the_numpy_formulas(quantizer, rows):
    """The error pass's per-row scale, bounds and clamp flags (one numba pass) are exactly the
    float32 values of ``params_for`` and the monotonic clamp test written with numpy."""
    lo = np.array([min(a, b) for a, b in rows], dtype=np.float32)
    hi = np.array([max(a, b) for a, b in rows], dtype=np.float32)
    scale, inv, cmin, cmax, clamp = numba_cpu.row_params(quantizer, lo, hi, DEFAULT_BITS)
    with np.errstate(invalid="ignore", over="ignore"):
        ref_scale, ref_cmin, ref_cmax = torch_rows.params_for(quantizer, lo, hi, DEFAULT_BITS)
        ref_inv = np.float32(1.0) / ref_scale
        ref_clamp = ~((np.rint(lo[:, None] * ref_inv) >= ref_cmin) & (np.rint(hi[:, None] * ref_inv) <= ref_cmax))
    for got, want in ((scale, ref_scale), (inv, ref_inv), (cmin, ref_cmin), (cmax, ref_cmax)):
        assert got.dtype == np.float32 and np.array_equal(got, want)  # equal floats (0.0 == -0.0)
    assert np.array_equal(clamp, ref_clamp)
