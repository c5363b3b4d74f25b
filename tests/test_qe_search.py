"""QE table, equation (1) and its breakpoints, on real and random weights."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mixquant_core.errors import InvalidWeightsError, MixQuantError
from mixquant_core.models.layers import find_layers, pinned_mask
from mixquant_core.quant.qe import QETable, qe_table
from mixquant_core.plans.search import breakpoints, search, search_many


def plain_qe(w: torch.Tensor, b: int) -> float:
    """Asymmetric per-tensor round-to-nearest written out longhand, independent of the package."""
    w = w.double()
    lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
    scale = max((hi - lo) / (2**b - 1), float(np.finfo(np.float32).eps))
    zp = min(max(round(-lo / scale), 0), 2**b - 1)
    q = torch.clamp(torch.round(w / scale) + zp, 0, 2**b - 1)
    return float(torch.mean((w - (q - zp) * scale) ** 2))


def test_layers_of_tiny_model_have_kinds(tiny_model):
    layers = find_layers(tiny_model)
    assert [(l.name, l.kind) for l in layers] == [
        ("stem", "first_conv"), ("dw", "depthwise"), ("pw", "1x1_conv"), ("conv", "kxk_conv"), ("fc", "fc")]
    assert [l.params for l in layers] == [8 * 3 * 9, 8 * 9, 16 * 8, 16 * 16 * 9, 10 * 16]
    assert [l.name for l in find_layers(tiny_model, exclude=["d*", "f?"])] == ["stem", "pw", "conv"]


def test_lite0_layers(lite0):
    layers = find_layers(lite0.model)
    assert len(layers) == 50
    kinds = {k: sum(l.kind == k for l in layers) for k in ("first_conv", "depthwise", "1x1_conv", "fc")}
    assert kinds == {"first_conv": 1, "depthwise": 16, "1x1_conv": 32, "fc": 1}


def test_qe_table_equals_plain_loop_on_lite0(lite0):
    table = qe_table(lite0.model, "asymmetric")
    assert table.bits == (8, 7, 6, 5, 4, 3, 2)
    weights = {n: m.weight.detach() for n, m in lite0.model.named_modules() if hasattr(m, "weight") and n in table.names}
    for i, name in enumerate(table.names[:: 7]):  # a spread of layers keeps this quick
        row = table.names.index(name)
        expect = [plain_qe(weights[name], b) for b in table.bits]
        np.testing.assert_allclose(table.qe[row], expect, rtol=2e-3)
    # the table's reference method (Algorithm 1 as a plain loop) agrees everywhere
    ref = qe_table(lite0.model, "asymmetric", method="reference")
    np.testing.assert_allclose(table.qe, ref.qe, rtol=1e-4)
    # MSE: one bit less multiplies QE by about 4
    ratios = table.qe[:, 1:4] / table.qe[:, 0:3]
    assert 3.0 < np.median(ratios) < 5.0


@pytest.mark.parametrize("quantizer", ["asymmetric", "symmetric", "per-channel"])
def test_qe_table_all_quantizers_finite_on_lite0(lite0, quantizer):
    table = qe_table(lite0.model, quantizer, bits=(8, 4, 2))
    assert np.isfinite(table.qe).all() and (table.qe >= 0).all()
    assert np.all(table.rqe >= 0)


def test_qe_table_rejects_nan_weights_naming_layer(tiny_model):
    with torch.no_grad():
        tiny_model.pw.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidWeightsError, match="'pw'"):
        qe_table(tiny_model)


def test_bits_always_include_8_and_are_validated(tiny_model):
    assert qe_table(tiny_model, bits=[4, 2]).bits == (8, 4, 2)
    with pytest.raises(MixQuantError, match="from 2 to 8"):
        qe_table(tiny_model, bits=[8, 1])


def equation_1(qe_row, bits, qem):
    """The paper's rule, literally: the lowest b with QE(b) <= QEM * QE(8)."""
    base = qe_row[bits.index(8)]
    return min(b for b, q in zip(bits, qe_row) if q <= qem * base)


tables = st.integers(1, 6).flatmap(lambda L: arrays(np.float64, (L, 7), elements=st.floats(1e-8, 1.0)))


def _table(qe: np.ndarray) -> QETable:
    from mixquant_core.models.layers import LayerInfo

    layers = [LayerInfo(f"l{i}", "kxk_conv", 10, (10,)) for i in range(len(qe))]
    return QETable(layers, (8, 7, 6, 5, 4, 3, 2), qe, np.ones(len(qe)), "asymmetric")


@given(qe=tables, qems=st.lists(st.floats(1.0, 1e4), min_size=1, max_size=8))
def test_search_is_equation_1(qe, qems):
    table = _table(qe)
    got = search_many(table, qems)
    for q, row in zip(qems, got):
        assert list(row) == [equation_1(list(qe[l]), list(table.bits), q) for l in range(len(qe))]


@given(qe=tables)
def test_breakpoints_match_dense_grid(qe):
    table = _table(qe)
    fam = breakpoints(table)
    L, B = qe.shape
    assert fam.qems[0] == 1.0 and np.all(np.diff(fam.qems) > 0)
    assert len(fam) <= L * (B - 1) + 1
    # consecutive family plans differ, and each holds on its whole interval
    assert all(np.any(a != b) for a, b in zip(fam.bits[:-1], fam.bits[1:]))
    grid = np.concatenate([np.geomspace(1, 1e5, 400), fam.qems, np.nextafter(fam.qems, np.inf)])
    dense = search_many(table, grid)
    for q, bits in zip(grid, dense):
        assert np.array_equal(bits, fam.bits[fam.index_for(q)])
    # every distinct plan of the dense grid is in the family
    assert {tuple(b) for b in dense} <= {tuple(b) for b in fam.bits}


def test_breakpoints_exact_at_threshold():
    qe = np.array([[1.0, 3.0, 9.0, 30.0, 100.0, 400.0, 2000.0]])
    table = _table(qe)
    fam = breakpoints(table)
    np.testing.assert_array_equal(fam.qems, [1, 3, 9, 30, 100, 400, 2000])
    assert search(table, 9.0)[0] == 6 and search(table, np.nextafter(9.0, 0))[0] == 7


def test_pinned_layers_stay_at_8():
    qe = np.tile([1.0, 4, 16, 64, 256, 1024, 4096], (3, 1))
    table = _table(qe)
    pinned = pinned_mask(table.layers, keep_first_last=True)
    assert list(search(table, 1e6, pinned)) == [8, 2, 8]
    assert all(row[0] == 8 and row[-1] == 8 for row in breakpoints(table, pinned).bits)


def test_zero_qe_layer_goes_to_lowest_exact_bits():
    qe = np.array([[0.0, 0, 0, 0, 0, 0, 0], [0.0, 0, 0, 0, 0, 1e-9, 1e-3]])
    assert list(search(_table(qe), 1.0)) == [2, 4]


@pytest.mark.parametrize("bad", [0.5, 0, -3, float("nan"), float("inf"), "x"])
def test_qem_below_one_rejected(bad):
    table = _table(np.ones((1, 7)))
    with pytest.raises(MixQuantError, match="QEM"):
        search(table, bad)
