"""Fisher sensitivity: the per-weight Fisher against finite differences of the loss, and the
Fisher-weighted error against the real loss change that quantization causes."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from conftest import TinyNet
from mixquant_core.data.image_sets import EvalTensors
from mixquant_core.data.load import load_tensors
from mixquant_core.errors import DatasetError, InvalidWeightsError, MixQuantError
from mixquant_core.models.layers import find_layers, layer_weights
from mixquant_core.models.registry import LoadedModel, fingerprint
from mixquant_core.plans.plan import applied
from mixquant_core.models.preprocess import Preprocess
from mixquant_core.data.image_sets import NO_LABEL, open_calibration_folder
from mixquant_core.plans.fisher import fisher_diagonal, fisher_table
from mixquant_core.workspace import Workspace


@pytest.fixture
def tiny64():
    torch.manual_seed(0)
    model = TinyNet().double().eval()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    y = torch.tensor([0, 3, 7, 1])
    return model, EvalTensors(x, y)


def image_loss(model, x, y, i) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]))


def test_fisher_is_the_mean_squared_finite_difference_slope_of_each_image_loss(tiny64):
    model, data = tiny64
    layers = find_layers(model)
    fisher = fisher_diagonal(model, layers, data)
    rng = np.random.default_rng(0)
    h = 1e-6
    for layer, w, f in zip(layers, layer_weights(model, layers), fisher):
        for flat in rng.choice(w.numel(), size=2, replace=False):
            idx = np.unravel_index(flat, tuple(w.shape))
            slopes = []
            for i in range(len(data)):
                with torch.no_grad():
                    original = w[idx].item()
                    w[idx] = original + h
                    up = image_loss(model, data.images, data.labels, i)
                    w[idx] = original - h
                    down = image_loss(model, data.images, data.labels, i)
                    w[idx] = original
                slopes.append((up - down) / (2 * h))
            expected = float(np.mean(np.square(slopes)))
            assert f[idx].item() == pytest.approx(expected, rel=1e-5, abs=1e-12), (layer.name, idx)


def test_images_without_labels_use_the_models_own_prediction(tiny64):
    model, data = tiny64
    layers = find_layers(model)
    with torch.no_grad():
        predicted = model(data.images).argmax(dim=1)
    assert not torch.equal(predicted, data.labels)  # otherwise the test could not tell them apart
    unlabelled = fisher_diagonal(model, layers, EvalTensors(data.images, torch.full_like(data.labels, NO_LABEL)))
    as_labels = fisher_diagonal(model, layers, EvalTensors(data.images, predicted))
    with_truth = fisher_diagonal(model, layers, data)
    for a, b, c in zip(unlabelled, as_labels, with_truth):
        torch.testing.assert_close(a, b)
    assert any(not torch.allclose(a, c) for a, c in zip(unlabelled, with_truth))


def test_fisher_leaves_the_model_as_it_was(tiny64):
    model, data = tiny64
    model.bn.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    fisher_table(model, find_layers(model), data)
    assert not model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("quantizer", ["asymmetric", "per-channel-mse"])
def test_half_the_fisher_error_predicts_the_loss_increase_of_quantizing(quantizer):
    """Softmax regression fitted to labels drawn from a softmax model of its own family: at that
    maximum-likelihood fit the Fisher equals the expected Hessian, so 0.5 * sum F (w - q(w))^2
    should match the measured mean loss increase at every bit-width (within sampling noise)."""
    g = torch.Generator().manual_seed(0)
    n, d, k = 2000, 12, 4
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    teacher = torch.randn(k, d, generator=g, dtype=torch.float64) * 0.7
    y = torch.multinomial(torch.softmax(x @ teacher.T, dim=1), 1, generator=g).squeeze(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(d, k)).double()
    opt = torch.optim.LBFGS(model.parameters(), max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    layers = find_layers(model)
    table = fisher_table(model, layers, EvalTensors(x, y), quantizer, bits=(8, 7, 6, 5, 4, 3, 2))
    with torch.no_grad():
        base = float(F.cross_entropy(model(x), y))
    ratios = []
    for j, b in enumerate(table.bits):
        with applied(model, {layers[0].name: b}, quantizer), torch.no_grad():
            increase = float(F.cross_entropy(model(x), y)) - base
        ratios.append(increase / (0.5 * table.cost[0, j]))
    assert all(0.6 < r < 1.6 for r in ratios), dict(zip(table.bits, np.round(ratios, 3)))
    assert np.all(np.diff(table.cost[0]) > 0)  # fewer bits, more cost


def test_nan_weights_and_empty_calibration_are_clear_errors(tiny64):
    model, data = tiny64
    layers = find_layers(model)
    with pytest.raises(DatasetError, match="empty"):
        fisher_diagonal(model, layers, EvalTensors(data.images[:0], data.labels[:0]))
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    with pytest.raises(InvalidWeightsError, match="fc"):
        fisher_diagonal(model, layers, data)


def test_workspace_caches_the_fisher_table_and_budgets_with_it(tiny64):
    model, _ = tiny64
    model = model.float()
    loaded = LoadedModel(model, "tinynet", "file", Preprocess(8, 6), fingerprint(model))
    ws = Workspace(loaded, device="cpu")
    calib = EvalTensors(torch.randn(4, 3, 6, 6), torch.tensor([1, 2, NO_LABEL, 4]))
    first = ws.fisher(calib)
    assert ws.fisher(calib) is first
    assert first.images == 4 and first.labelled == 3
    assert ws.fisher(EvalTensors(calib.images, calib.labels)) is not first  # another set, recomputed
    bits = ws.budget_bits("fisher", avg_bits=5, calib=calib)
    assert ws.size(bits).avg_bits <= 5 + 1e-9
    with pytest.raises(MixQuantError, match="calibration"):
        ws.budget_bits("fisher", avg_bits=5)


def test_plain_image_folder_calibrates_on_predictions(tmp_path):
    for i in range(5):
        Image.fromarray(np.full((10, 12, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    images = open_calibration_folder(str(tmp_path), n=3)
    assert len(images) == 3 and images.labels == [NO_LABEL] * 3
    assert images.paths[0].endswith("img0.png") and images.paths[-1].endswith("img4.png")  # spread out
    assert (load_tensors(images, Preprocess(8, 6).transform()).labels == NO_LABEL).all()
    with pytest.raises(DatasetError):
        open_calibration_folder(str(tmp_path / "missing"))


@pytest.mark.data
def test_lite0_fisher_on_real_calibration_images(lite0, data_root):
    images = open_calibration_folder(str(data_root / "imagenet-calib-1000"), n=2)
    calib = load_tensors(images, lite0.preprocess.transform())
    ws = Workspace(lite0, device="cpu")
    table = ws.fisher(calib)
    assert table.cost.shape == (50, 7) and table.labelled == 2
    assert np.all(np.isfinite(table.cost)) and np.all(table.fisher_sum > 0)
    # per layer, fewer bits always cost more (the rounding step doubles with each bit removed)
    assert np.all(np.diff(table.cost, axis=1) > 0)
