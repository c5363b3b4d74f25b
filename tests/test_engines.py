"""Evaluation engines: ONNX Runtime gives the torch engine's numbers, never touches the shared
model, falls back to torch for a model it cannot export; on Lite0 + 300 real images, identical
top-1/top-5 counts for float32, int8 and three mixed plans."""
from __future__ import annotations

import gc
import inspect
import weakref

import numpy as np
import pytest
import torch
from torch import nn

from mixquant_cli.main import main
from mixquant_core.data.image_sets import EvalTensors
from mixquant_core.errors import MixQuantError
from mixquant_core.evaluation.engines import Engine, get_engine
from mixquant_core.evaluation.engines import onnxruntime_engine
from mixquant_core.evaluation.engines.onnxruntime_engine import OnnxRuntimeEngine
from mixquant_core.evaluation.engines.torch_engine import TorchEngine
from mixquant_core.plans.plan import applied
from recon_support import MIXED_BITS, tiny_chain, workspace


def _data(n: int = 20, seed: int = 0) -> EvalTensors:
    g = torch.Generator().manual_seed(seed)
    return EvalTensors(torch.randn(n, 3, 24, 24, generator=g), torch.randint(0, 10, (n,), generator=g))


def _state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("quantizer", ["asymmetric", "symmetric", "per-channel"])
def test_onnxruntime_matches_torch_and_leaves_the_model_alone(quantizer, one_thread):
    model = tiny_chain()
    ws = workspace(model, quantizer)
    bits = {layer.name: b for layer, b in zip(ws.layers, MIXED_BITS)}
    data = _data()
    before = _state(model)
    for planned in (None, bits):
        ort_m = OnnxRuntimeEngine(batch_size=7).evaluate(model, data, planned, quantizer)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # never mutated
        torch_m = TorchEngine("cpu").evaluate(model, data, planned, quantizer)
        np.testing.assert_array_equal(ort_m.hit1, torch_m.hit1)
        np.testing.assert_array_equal(ort_m.hit5, torch_m.hit5)
        np.testing.assert_allclose(ort_m.losses, torch_m.losses, atol=1e-5)
    # the plan changed the numbers (the quantized weights really reached the graph)
    assert not np.allclose(OnnxRuntimeEngine().evaluate(model, data, bits, quantizer).losses,
                           OnnxRuntimeEngine().evaluate(model, data, None, quantizer).losses)


def test_onnxruntime_follows_weights_changed_after_the_first_trace(one_thread):
    model = tiny_chain()
    data = _data()
    engine = OnnxRuntimeEngine()
    first = engine.evaluate(model, data)
    with torch.no_grad():
        model[0][1].running_mean.add_(1.5)  # a BatchNorm buffer, changed after the first trace
    after = engine.evaluate(model, data)
    np.testing.assert_allclose(after.losses, TorchEngine().evaluate(model, data).losses, atol=1e-5)
    assert not np.allclose(first.losses, after.losses)


class ValueBranch(nn.Module):
    """Python control flow on a tensor's value: a trace would freeze one branch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        x = self.conv(x)
        if x.mean() > 0:
            x = -x
        return self.fc(x.mean(dim=(2, 3)))


class CustomOp(ValueBranch):
    """An op ONNX has no translation for (aten::nanmedian): the exporter cannot write it."""

    def forward(self, x):
        x = self.conv(x)
        return self.fc((x - x.nanmedian()).mean(dim=(2, 3)))


@pytest.mark.parametrize("cls", [ValueBranch, CustomOp])
def test_unexportable_model_falls_back_to_torch_with_one_notice(cls, one_thread):
    torch.manual_seed(0)
    model = cls().eval()
    data = _data()
    notices = []
    engine = OnnxRuntimeEngine(notify=notices.append)
    got = [engine.evaluate(model, data, bits, "asymmetric") for bits in (None, {"conv": 4})]
    want = [TorchEngine().evaluate(model, data, bits, "asymmetric") for bits in (None, {"conv": 4})]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.losses, w.losses)
    assert len(notices) == 1 and "\n" not in notices[0]
    assert "cannot be exported to ONNX" in notices[0] and "torch" in notices[0]


@pytest.mark.parametrize("cls", [TorchEngine, OnnxRuntimeEngine])
def test_engines_implement_the_protocol_signature_exactly(cls):
    # Callers pass any of the protocol's arguments (early_stop included) to whichever engine
    # get_engine chose: names, order, kinds, defaults and annotations must not drift apart.
    assert inspect.signature(cls.evaluate) == inspect.signature(Engine.evaluate)
    assert "name" in Engine.__annotations__ and isinstance(cls.name, str)


def test_a_new_model_where_a_freed_one_was_still_gets_its_notice(one_thread, monkeypatch):
    # CPython may give a new object a freed one's address, hence its id(); that rarely happens on
    # cue, so here every id() in the engine's module answers the same, as if it always did.
    monkeypatch.setattr(onnxruntime_engine, "id", lambda obj: 0, raising=False)
    data = _data(4)
    notices = []
    engine = OnnxRuntimeEngine(notify=notices.append)
    first = CustomOp().eval()
    engine.evaluate(first, data)
    gone = weakref.ref(first)
    del first
    gc.collect()
    assert gone() is None  # the engine does not keep a model alive to remember it
    engine.evaluate(CustomOp().eval(), data)
    assert len(notices) == 2


def test_get_engine_auto_and_bad_names():
    assert get_engine("auto", "cpu").name == "onnxruntime"
    assert get_engine("auto", torch.device("cuda")).name == "torch"  # no GPU needed to choose
    assert get_engine("torch", "cpu").name == "torch"
    with pytest.raises(MixQuantError, match="unknown engine"):
        get_engine("tensorrt", "cpu")


def test_cli_rejects_an_unknown_engine(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--data", "x", "--engine", "tensorrt"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


# --- Lite0 on real images ------------------------------------------------------------------------
# A flipped image is allowed only where the two engines' logits could order it either way: the
# deciding logits (1st vs 2nd for top-1, 5th vs 6th for top-5) within FLIP_MARGIN of each other.
# The engines' logits differ by ~1e-5 (float summation order), so FLIP_MARGIN = 1e-4 is 10x that.
FLIP_MARGIN = 1e-4


def _deciding_gaps(model, x, bits, quantizer):
    with torch.inference_mode(), applied(model, bits or {}, quantizer):
        top = model(x).topk(6, dim=1).values
    return (top[:, 0] - top[:, 1]).numpy(), (top[:, 4] - top[:, 5]).numpy()


@pytest.mark.data
@pytest.mark.slow
def test_lite0_same_counts_with_both_engines_on_300_images(lite0, val_dir):
    from mixquant_core.data.image_sets import open_image_folder
    from mixquant_core.data.load import load_tensors
    from mixquant_core.evaluations import Evaluations
    from mixquant_core.workspace import Workspace

    data = load_tensors(open_image_folder(val_dir).subset(300), lite0.preprocess)
    ws_t = Workspace(lite0, device="cpu", engine="torch")
    ws_o = Workspace(lite0, device="cpu", engine="onnxruntime")
    assert ws_o.evaluator.engine.name == "onnxruntime"
    ev_t, ev_o = Evaluations(ws_t), Evaluations(ws_o)
    mixed = [ws_t.budget_bits("qe", avg_bits=a) for a in (7, 6, 5)]  # least summed QE at 7, 6, 5 average bits
    assert len({tuple(b) for b in mixed}) == 3 and all(len(set(b)) > 1 for b in mixed)  # really mixed
    for bits in [None, ws_t.uniform(8)] + mixed:
        t, o = ev_t.evaluate_bits(bits, data), ev_o.evaluate_bits(bits, data)
        assert abs(t.loss - o.loss) <= 1e-4
        flipped1, flipped5 = np.flatnonzero(t.hit1 != o.hit1), np.flatnonzero(t.hit5 != o.hit5)
        if len(flipped1) or len(flipped5):
            named = None if bits is None else {l.name: int(b) for l, b in zip(ws_t.layers, bits)}
            idx = np.union1d(flipped1, flipped5)
            gap1, gap5 = _deciding_gaps(lite0.model, data.to_inputs(data.images[idx]), named, ws_t.quantizer)
            assert all(gap1[np.searchsorted(idx, i)] <= FLIP_MARGIN for i in flipped1)
            assert all(gap5[np.searchsorted(idx, i)] <= FLIP_MARGIN for i in flipped5)
        else:
            assert (t.top1, t.top5) == (o.top1, o.top5)
