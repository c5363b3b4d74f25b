"""What the sweep's speed-ups must not change: ``applied`` swaps weights in place and restores
them bit for bit, ``evaluate`` gives the metrics of a plain loop whatever the batching, and the
threaded ``load_tensors`` gives the tensors of a one-by-one decode."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mixquant_core.data.image_sets import EvalTensors, ImageList
from mixquant_core.data.load import load_tensors
from mixquant_core.errors import MixQuantError
from mixquant_core.evaluation.evaluate import evaluate
from mixquant_core.plans.plan import applied
from mixquant_core.models.preprocess import Preprocess
from mixquant_core.quant.quantizers import fake_quantize


def snapshot(model):
    return {name: (p, p.data_ptr(), p.detach().clone()) for name, p in model.named_parameters()}


@pytest.mark.parametrize("quantizer", ["asymmetric", "symmetric", "per-channel"])
def test_applied_swaps_in_place_and_restores_bit_exactly(tiny_model, quantizer, monkeypatch):
    def no_deepcopy(*args, **kwargs):
        raise AssertionError("applied() copied the whole model")

    monkeypatch.setattr(copy, "deepcopy", no_deepcopy)
    before = snapshot(tiny_model)
    plan = {"stem": 3, "conv": 2, "fc": 5}
    with applied(tiny_model, plan, quantizer) as m:
        assert m is tiny_model
        for name, (param, ptr, original) in before.items():
            now = dict(tiny_model.named_parameters())[name]
            assert now is param and now.data_ptr() == ptr  # same Parameter, same storage
            layer = name.rsplit(".", 1)[0]
            if name.endswith(".weight") and layer in plan:
                assert torch.equal(now, fake_quantize(original, plan[layer], quantizer))
            else:
                assert torch.equal(now, original)  # layers outside the plan, biases, BN: untouched
    for name, (param, ptr, original) in before.items():
        assert param.data_ptr() == ptr and torch.equal(param, original)


def test_applied_restores_after_an_error(tiny_model):
    before = snapshot(tiny_model)
    with pytest.raises(RuntimeError, match="boom"):
        with applied(tiny_model, {"pw": 2, "dw": 2}, "asymmetric"):
            raise RuntimeError("boom")
    for param, ptr, original in before.values():
        assert param.data_ptr() == ptr and torch.equal(param, original)


def plain_metrics(model, data):
    with torch.no_grad():
        logits = model(data.images).float()
    top5 = logits.topk(5, dim=1).indices
    hits = top5 == data.labels[:, None]
    n = len(data)
    return (100.0 * hits[:, 0].sum().item() / n, 100.0 * hits.any(1).sum().item() / n,
            F.cross_entropy(logits.double(), data.labels, reduction="mean").item())


def test_evaluate_equals_a_plain_loop_for_any_batch_size(tiny_model):
    gen = torch.Generator().manual_seed(1)
    data = EvalTensors(torch.randn(37, 3, 12, 12, generator=gen), torch.randint(0, 10, (37,), generator=gen))
    top1, top5, loss = plain_metrics(tiny_model, data)
    for batch_size in (None, 1, 5, 37, 100):
        m = evaluate(tiny_model, data, "cpu", batch_size=batch_size)
        assert m.images == 37
        assert m.top1 == pytest.approx(top1) and m.top5 == pytest.approx(top5)
        assert m.loss == pytest.approx(loss, rel=1e-5)
    assert 0 < top5 <= 100  # the check can fail: random labels on 10 classes hit the top 5 often


def test_evaluate_reports_nan_outputs(tiny_model):
    with torch.no_grad():
        tiny_model.fc.bias[3] = float("nan")
    data = EvalTensors(torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(MixQuantError, match="NaN/Inf outputs"):
        evaluate(tiny_model, data, "cpu", batch_size=2)


def test_threaded_load_tensors_equals_one_by_one_decode(tmp_path):
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i in range(9):
        size = (40 + 7 * i, 30 + 5 * i)
        img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        path = tmp_path / f"img{i}.{'png' if i % 2 else 'jpg'}"
        img.save(path)
        paths.append(str(path))
        labels.append(i * 11)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    paths.insert(4, str(tmp_path / "broken.jpg"))
    labels.insert(4, 999)
    transform = Preprocess(resize=36, crop=32).transform()
    seen = []
    data = load_tensors(ImageList(str(tmp_path), paths, labels), transform,
                        progress=lambda done, total, what: seen.append(done))
    assert data.skipped == [str(tmp_path / "broken.jpg")]
    assert data.labels.tolist() == [lab for lab in labels if lab != 999]
    expected = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths if not p.endswith("broken.jpg")])
    assert torch.equal(data.images, expected)  # same pixels, same order
    assert seen == list(range(1, len(paths) + 1))
