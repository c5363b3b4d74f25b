"""Per-image results of an evaluation, and caches keyed by the evaluation set's content."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import TinyNet
from mixquant_core import EvalTensors, Evaluations, Metrics, Workspace, evaluate, load_tensors, open_image_folder
from mixquant_core.errors import MixQuantError
from mixquant_core.models.preprocess import Preprocess
from mixquant_core.models.registry import LoadedModel, fingerprint


def tiny_set(seed: int, n: int = 13) -> EvalTensors:
    g = torch.Generator().manual_seed(seed)
    return EvalTensors(torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 10, (n,), generator=g))


def test_per_image_results_match_the_summary_and_a_direct_computation():
    torch.manual_seed(0)
    model = TinyNet().eval()
    data = tiny_set(1)
    m = evaluate(model, data, "cpu", batch_size=4)  # 13 images: the last batch is short
    with torch.no_grad():
        logits = model(data.images)
    top5 = logits.topk(5, dim=1).indices
    assert m.images == 13 and m.hit1.shape == m.hit5.shape == m.losses.shape == (13,)
    np.testing.assert_array_equal(m.hit1, (logits.argmax(1) == data.labels).numpy())
    np.testing.assert_array_equal(m.hit5, (top5 == data.labels[:, None]).any(1).numpy())
    np.testing.assert_allclose(m.losses, F.cross_entropy(logits, data.labels, reduction="none").numpy(), rtol=1e-5)
    assert m.top1 == pytest.approx(100 * m.hit1.mean()) and m.top5 == pytest.approx(100 * m.hit5.mean())
    assert m.loss == pytest.approx(m.losses.mean())
    assert set(m.to_dict()) == {"top1", "top5", "loss", "images"}  # JSON stays small


def test_metrics_from_per_image_refuse_mismatched_lengths():
    with pytest.raises(MixQuantError, match="disagree"):
        Metrics.from_per_image([True, False], [True], [0.1, 0.2])
    with pytest.raises(MixQuantError):
        Metrics.from_per_image([], [], [])


def test_workspace_cache_is_keyed_by_content_not_identity():
    torch.manual_seed(0)
    model = TinyNet().eval()
    ws = Evaluations(Workspace(LoadedModel(model, "tinynet", "file", Preprocess(8, 6), fingerprint(model)), device="cpu"))
    first = ws.evaluate_bits(None, tiny_set(1))
    # A new object with the same content is the same set (cached); another content never gets
    # the first set's numbers, whatever address it lands at.
    assert ws.evaluate_bits(None, tiny_set(1)) is first
    for seed in range(2, 6):
        other = tiny_set(seed)
        direct = evaluate(model, other, "cpu")
        assert ws.evaluate_bits(None, other).top1 == direct.top1
        del other


def test_loaded_sets_are_keyed_by_files_sizes_and_labels(tmp_path):
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (10, 10), (i * 40, 0, 0)).save(root / "images" / f"img{i}.png")
    (root / "labels.txt").write_text("img0.png 1\nimg1.png 2\nimg2.png 3\n")
    t = Preprocess(8, 6).transform()
    key = load_tensors(open_image_folder(str(root)), t).fingerprint
    assert load_tensors(open_image_folder(str(root)), t).fingerprint == key  # same files: same key
    (root / "labels.txt").write_text("img0.png 1\nimg1.png 2\nimg2.png 4\n")
    relabelled = load_tensors(open_image_folder(str(root)), t).fingerprint
    Image.new("RGB", (12, 12), (0, 0, 0)).save(root / "images" / "img0.png")
    changed = load_tensors(open_image_folder(str(root)), t).fingerprint
    assert len({key, relabelled, changed}) == 3
    assert load_tensors(open_image_folder(str(root)), Preprocess(8, 4).transform()).fingerprint != changed
