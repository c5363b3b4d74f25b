"""Quantizers: error bounds, grids, degenerate tensors (hypothesis property tests)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mixquant_core.errors import InvalidWeightsError, MixQuantError
from mixquant_core.quant.quantizers import (MINMAX_QUANTIZERS, QUANTIZERS, base_scheme, check_finite, dequantize,
                                            fake_quantize, is_symmetric, quantize)

SCHEMES = list(QUANTIZERS)
finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=32)
weights = arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 40)), elements=finite)
bits = st.integers(2, 8)


def code_limits(scheme, b):
    return (-(2 ** (b - 1)), 2 ** (b - 1) - 1) if is_symmetric(scheme) else (0, 2**b - 1)


@given(w=weights, b=bits, scheme=st.sampled_from(SCHEMES))
def test_codes_in_range_and_error_within_half_step(w, b, scheme):
    w = torch.from_numpy(w)
    codes, meta = quantize(w, b, scheme)
    assert torch.equal(codes, torch.round(codes)), "codes must be integers"
    lo, hi = code_limits(scheme, b)
    assert codes.min() >= lo and codes.max() <= hi
    w_hat = dequantize(codes, meta)
    assert torch.isfinite(w_hat).all()
    assert torch.equal(w_hat, fake_quantize(w, b, scheme))
    err = (w - w_hat).abs()
    # Every value inside the grid's range is within half a step: the affine range covers
    # [min(w,0), max(w,0)] (min/max) and rounding the zero-point shifts the grid by at most half a
    # step; symmetric maps max|w| onto qmax. MSE-clipped ranges clip the values beyond them to
    # the end codes.
    step = meta.scale.expand_as(w)
    inside = (codes > lo) & (codes < hi) if scheme.endswith("-mse") else torch.ones_like(w, dtype=torch.bool)
    assert torch.all(err[inside] <= step[inside] * 0.5 * (1 + 1e-4) + 1e-6)


def mse(w, scheme, b):
    return float(torch.mean((w.double() - fake_quantize(w, b, scheme).double()) ** 2))


spread = st.floats(-1, 1, allow_nan=False, width=32)
layer_like = arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 60)), elements=spread)


@given(w=layer_like, b=bits, scheme=st.sampled_from([q for q in SCHEMES if q.endswith("-mse")]),
       outlier=st.sampled_from([1.0, 4.0, 30.0]), zero_row=st.booleans())
def test_mse_range_never_worse_than_min_max(w, b, scheme, outlier, zero_row):
    w = torch.from_numpy(w).clone()
    w[:, 0] *= outlier  # one outlier per row: where clipping pays
    if zero_row:
        w[0] = 0.0  # an all-zero channel must stay exactly zero, not NaN
    ours, base = mse(w, scheme, b), mse(w, base_scheme(scheme), b)
    assert ours <= base * (1 + 1e-6) + 1e-30
    out = fake_quantize(w, b, scheme)
    assert torch.isfinite(out).all()
    if zero_row and scheme == "per-channel-mse":
        assert torch.equal(out[0], torch.zeros_like(out[0]))


@pytest.mark.parametrize("scheme", ["asymmetric-mse", "symmetric-mse", "per-channel-mse"])
def test_mse_range_pays_on_heavy_tailed_weights(scheme):
    # Student-t weights (heavy tails, like trained conv weights): at 2 bits the few largest
    # weights stretch min/max's grid for all others; clipping them cuts the error by a third at least
    torch.manual_seed(3)
    w = torch.distributions.StudentT(4.0).sample((16, 256))
    assert mse(w, scheme, 2) < mse(w, base_scheme(scheme), 2) * 0.75
    _, ours = quantize(w, 2, scheme)
    _, base = quantize(w, 2, base_scheme(scheme))
    assert torch.all(ours.scale <= base.scale) and torch.any(ours.scale < base.scale)  # really clipped


@pytest.mark.parametrize("scheme", SCHEMES)
def test_all_zero_tensor_stays_zero(scheme):
    w = torch.zeros(4, 3, 3, 3)
    codes, meta = quantize(w, 3, scheme)
    assert torch.isfinite(meta.scale).all() and (meta.scale > 0).all()
    assert torch.equal(dequantize(codes, meta), w)


# Min/max only: an MSE search run again on quantized weights sees another min/max and may pick
# another grid (w = [-1, 1] at 4 bits: its clipped grid gives [-0.933, 0.933], whose own best
# affine grid, zero-point rounded, is not the first one). Quantizing once is what the tool does.
@given(w=weights, b=bits, scheme=st.sampled_from(MINMAX_QUANTIZERS))
def test_idempotent_on_its_own_grid(w, b, scheme):
    w = torch.from_numpy(w)
    once = fake_quantize(w, b, scheme)
    twice = fake_quantize(once, b, scheme)
    assert torch.allclose(once, twice, atol=1e-5 * (1 + float(w.abs().max())))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("value", [0.0, 1.5, -2.0, 1e-30])
@pytest.mark.parametrize("b", [2, 4, 8])
def test_constant_tensor_is_finite_and_exact(scheme, value, b):
    w = torch.full((4, 3, 3, 3), value)
    out = fake_quantize(w, b, scheme)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, w, atol=abs(value) * 1e-6 + 1e-30)


@pytest.mark.parametrize("b", [2, 5, 8])
def test_per_channel_all_zero_channel_stays_zero_and_finite(b):
    torch.manual_seed(1)
    w = torch.randn(6, 1, 3, 3)
    w[2] = 0.0  # like EfficientNet-Lite's depthwise convs
    out = fake_quantize(w, b, "per-channel")
    assert torch.isfinite(out).all()
    assert torch.equal(out[2], torch.zeros_like(out[2]))
    mse_out = fake_quantize(w, b, "per-channel-mse")
    assert torch.isfinite(mse_out).all() and torch.equal(mse_out[2], torch.zeros_like(mse_out[2]))
    # other channels use their own range: error bounded by their own half step
    for c in (0, 1, 3):
        step = (w[c].max().clamp(min=0) - w[c].min().clamp(max=0)) / (2**b - 1)
        assert (w[c] - out[c]).abs().max() <= step / 2 * (1 + 1e-4)


def test_per_channel_beats_per_tensor_when_channel_ranges_differ():
    torch.manual_seed(2)
    w = torch.randn(8, 16) * torch.logspace(-3, 0, 8)[:, None]
    per_tensor = torch.mean((w - fake_quantize(w, 4, "asymmetric")) ** 2)
    per_channel = torch.mean((w - fake_quantize(w, 4, "per-channel")) ** 2)
    assert per_channel < per_tensor / 2


@pytest.mark.parametrize("b", [2, 4, 8])
def test_per_channel_symmetric_is_each_rows_own_symmetric_grid(b):
    """Zero-point 0 and signed codes, one scale per output channel (max |w| of that channel): the
    grid ONNX Runtime's fast integer kernels take; an all-zero channel stays exactly zero."""
    torch.manual_seed(3)
    w = torch.randn(5, 3, 3, 3) * torch.logspace(-2, 0, 5)[:, None, None, None]
    w[1] = 0.0
    codes, meta = quantize(w, b, "per-channel-symmetric")
    qmax = 2 ** (b - 1) - 1
    assert meta.signed and meta.scale.shape == (5, 1, 1, 1) and torch.equal(meta.zero_point, torch.zeros(5, 1, 1, 1))
    assert codes.min() >= -(2 ** (b - 1)) and codes.max() <= qmax
    out = dequantize(codes, meta)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    for c in (0, 2, 3, 4):
        row = w[c]
        assert torch.allclose(meta.scale[c].reshape(()), row.abs().max() / qmax)
        assert torch.allclose(out[c], fake_quantize(row, b, "symmetric"))  # each row: the per-tensor grid of its own


def test_asymmetric_matches_textbook_formula():
    w = torch.tensor([-1.0, -0.25, 0.1, 0.5, 2.0])
    b = 3
    scale = (2.0 - -1.0) / 7
    zp = round(1.0 / scale)
    expected = (torch.clamp(torch.round(w / scale) + zp, 0, 7) - zp) * scale
    assert torch.allclose(fake_quantize(w, b, "asymmetric"), expected)


@pytest.mark.parametrize("bad", [1, 9, 0, 3.5])
def test_bits_out_of_range_rejected(bad):
    with pytest.raises(MixQuantError, match="bit-width"):
        quantize(torch.ones(3), bad)


def test_unknown_scheme_rejected():
    with pytest.raises(MixQuantError, match="unknown quantizer 'fp4'"):
        quantize(torch.ones(3), 4, "fp4")


def test_nan_weights_named():
    w = torch.ones(4)
    w[1] = math.nan
    with pytest.raises(InvalidWeightsError, match="layer 'features.3'.*NaN"):
        check_finite(w, "features.3")


@pytest.mark.parametrize("symmetric", [False, True])
@given(w=layer_like, b=bits)
def test_range_search_numba_and_torch_agree(w, b, symmetric):
    # the compiled search and the torch one run the same float32 steps: only the order of the
    # float64 sum differs
    from mixquant_core.quant import clip_search
    from mixquant_core.quant.quantizers import CLIP_RATIOS, range_params, code_bounds

    if not clip_search.HAVE_NUMBA:
        pytest.skip("numba not installed")
    rows = torch.from_numpy(w)
    lo, hi = torch.aminmax(rows, dim=1)
    scale, zp = range_params(lo[:, None] * CLIP_RATIOS, hi[:, None] * CLIP_RATIOS, b, symmetric)
    qmin, qmax = code_bounds(b, symmetric)
    compiled = torch.from_numpy(clip_search._numba_errors(rows.numpy(), scale.numpy(), zp.numpy(),
                                                          np.float32(qmin), np.float32(qmax)))
    plain = clip_search._torch_errors(rows, scale, zp, float(qmin), float(qmax))
    torch.testing.assert_close(compiled, plain, rtol=1e-12, atol=0)
