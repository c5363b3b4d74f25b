"""sensitivity_kind.py and tradeoff.py: the numbers behind the Sensitivity and Trade-off pages."""
import numpy as np
import pytest
import torch

from mixquant_core import Workspace, find_layers, qe_table
from mixquant_core.data.image_sets import EvalTensors
from mixquant_core.models.registry import LoadedModel
from mixquant_core.models.preprocess import Preprocess
from mixquant_core.studies.kind_sensitivity import bits_for_kind, kind_sensitivity, kinds_present, most_sensitive_by_rqe
from mixquant_core.studies.tradeoff import rows_to_csv
from mixquant_core.evaluations import PLAN_ROW_COLUMNS, Evaluations, PlanRow


def test_kinds_present_in_canonical_order(tiny_model):
    layers = find_layers(tiny_model)
    assert kinds_present(layers) == ["first_conv", "kxk_conv", "1x1_conv", "depthwise", "fc"]


def test_bits_for_kind_changes_only_that_kind(tiny_model):
    layers = find_layers(tiny_model)
    bits = bits_for_kind(layers, "depthwise", 3)
    assert [int(b) for b in bits] == [3 if l.kind == "depthwise" else 8 for l in layers]


def test_most_sensitive_is_the_rqe_argmax(tiny_model):
    table = qe_table(tiny_model)
    top = most_sensitive_by_rqe(table)
    assert [t.bits for t in top] == list(table.bits)
    for t in top:
        j = table.bits.index(t.bits)
        assert t.rqe == table.rqe[:, j].max()
        assert t.name == table.names[int(np.argmax(table.rqe[:, j]))]
        assert t.qe == table.qe[table.names.index(t.name), j]
    assert [t.bits for t in most_sensitive_by_rqe(table, [2, 4])] == [4, 2]


def test_kind_sensitivity_evaluates_each_pair_through_the_workspace(tiny_model):
    ws = Workspace(LoadedModel(tiny_model, "tiny", "test", Preprocess(32, 32)), device="cpu")
    ev = Evaluations(ws)
    torch.manual_seed(1)
    data = EvalTensors(torch.randn(12, 3, 16, 16), torch.randint(0, 10, (12,)))
    calls = []
    rows = kind_sensitivity(ev, data, [2, 4], ["fc", "depthwise"], progress=lambda d, t, w: calls.append((d, t)))
    assert [(r.kind, r.bits) for r in rows] == [("fc", 4), ("fc", 2), ("depthwise", 4), ("depthwise", 2)]
    for r in rows:
        m = ev.evaluate_bits(bits_for_kind(ws.layers, r.kind, r.bits), data)
        assert (r.top1, r.top5, r.loss) == (m.top1, m.top5, m.loss)
    assert rows[0].params == tiny_model.fc.weight.numel() and rows[0].layers == 1
    assert calls[-1] == (4, 4)
    # 2-bit fc really differs from 8-bit everywhere (the quantization is applied, then restored)
    base = ev.evaluate_bits(ws.uniform(8), data)
    assert rows[1].loss != base.loss
    fresh = Workspace(LoadedModel(tiny_model, "tiny", "test", Preprocess(32, 32)), device="cpu")
    assert ev.evaluate_bits(None, data).loss == pytest.approx(Evaluations(fresh).evaluate_bits(None, data).loss)


def _row(method, qem, top1, size):
    return PlanRow(method, qem, "", top1, 0.0, 0.0, None, 8.0, size, 1.0)


def test_rows_to_csv_has_the_sweep_columns():
    rows = [_row("float32", None, 80.0, 20.0), _row("mixquant", 2.0, 79.9, 4.9)]
    lines = rows_to_csv(rows).splitlines()
    assert lines[0].split(",") == PLAN_ROW_COLUMNS
    assert len(lines) == 3 and lines[2].startswith("mixquant,2.0,")
