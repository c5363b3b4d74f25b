"""Home page and the shared sidebar: model summary, eval-set sample, and every bad-input path."""
import io
from pathlib import Path

import pytest
import torch
from apptest_support import assert_ran_cleanly, errors, labelled_folder, new_app, png_bytes
from torch import nn

from mixquant_core import find_layers, load_model, open_image_folder
from mixquant_core.models.registry import torchvision_cache_path

SIDEBAR_LABELS = {"Model source", "Model", "Quantizer", "Keep first and last layer at 8 bits", "Candidate bit-widths",
                  "Device", "Evaluation set", "Image folder", "Images to evaluate (subset size)"}


def sidebar_labels(at):
    widgets = (at.sidebar.radio, at.sidebar.selectbox, at.sidebar.checkbox, at.sidebar.multiselect,
               at.sidebar.text_input, at.sidebar.number_input, at.sidebar.get("file_uploader"))
    return {w.label for group in widgets for w in group}


def test_home_summarises_the_builtin_model_offline():
    at = new_app().run()
    assert_ran_cleanly(at)
    assert SIDEBAR_LABELS <= sidebar_labels(at)
    assert at.sidebar.selectbox(key="model_name").value == "efficientnet_lite0"
    assert at.sidebar.selectbox(key="quantizer").value == "asymmetric"
    model = load_model("efficientnet_lite0").model
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Quantizable layers"] == str(len(find_layers(model)))
    assert metrics["Parameters"] == f"{sum(p.numel() for p in model.parameters()):,}"
    # under the layer kinds, what stays float32 and why
    rest = next(df.value for df in at.dataframe if "stays float32" in df.value.columns)
    assert list(rest["stays float32"]) == ["normalization", "bias"]
    assert rest["parameters"].sum() + sum(l.params for l in find_layers(model)) == sum(p.numel() for p in model.parameters())
    # no eval folder given: Home says so instead of failing
    assert any("No evaluation set" in i.value for i in at.info)
    assert not errors(at)


def test_registry_lists_builtin_then_paper_models_first():
    at = new_app().run()
    options = at.sidebar.selectbox(key="model_name").options
    names = [o.split()[0] for o in options]
    assert names[:3] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert names[3:11] == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                           "resnext50_32x4d", "resnext101_32x8d", "mobilenet_v2"]


@pytest.mark.data
def test_home_shows_a_labelled_sample(val_dir):
    data_dir = str(val_dir)
    at = new_app(data=data_dir).run()
    assert_ran_cleanly(at)
    assert not errors(at)
    captions = [c for img in at.get("image") for c in img.captions]
    assert len(captions) == 8
    names = open_image_folder(data_dir).class_names
    labels = [line.split()[1] for line in (Path(data_dir) / "labels.txt").read_text().splitlines()[:8]]
    for caption, label in zip(captions, labels):
        assert caption == f"{label}: {names[int(label)].split(',')[0]}"


def test_missing_folder_shows_an_error(tmp_path):
    at = new_app(data=str(tmp_path / "nope")).run()
    assert_ran_cleanly(at)
    assert any("does not exist" in e for e in errors(at))
    assert at.metric  # the model summary still works


def test_empty_folder_shows_an_error(tmp_path):
    at = new_app(data=str(tmp_path)).run()
    assert any("no labels.txt and no class subfolders" in e for e in errors(at))


def test_unlabeled_folder_shows_an_error(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    at = new_app(data=str(tmp_path)).run()
    assert any("cannot tell the labels" in e for e in errors(at))


def test_unreadable_image_shows_an_error_and_the_rest_still_shows(tmp_path):
    labelled_folder(tmp_path, {"good.png": (png_bytes(), 1), "broken.jpg": (b"not an image at all", 2)})
    at = new_app(data=str(tmp_path)).run()
    assert_ran_cleanly(at)
    errs = errors(at)
    assert len(errs) == 1 and "broken.jpg" in errs[0]
    assert len(at.get("image")) == 1  # good.png still shown


def test_corrupt_model_upload_shows_an_error_and_the_app_recovers():
    at = new_app(model_source="Upload a file").run()
    assert any("Upload a model file" in i.value for i in at.info)
    at.sidebar.get("file_uploader")[0].upload("model.pt", b"\x00garbage, not a checkpoint")
    at.run()
    assert_ran_cleanly(at)
    assert any(e.startswith("Cannot use this model") and "model.pt" not in e or "not a PyTorch checkpoint" in e
               for e in errors(at)), errors(at)
    # back to the built-in model: everything works again
    at.sidebar.radio(key="model_source").set_value("Registry").run()
    assert not errors(at) and at.metric


def test_state_dict_upload_without_architecture_says_so():
    buf = io.BytesIO()
    torch.save(nn.Linear(4, 3).state_dict(), buf)
    at = new_app(model_source="Upload a file").run()
    at.sidebar.get("file_uploader")[0].upload("weights.pt", buf.getvalue())
    at.run()
    assert any("name its architecture" in e for e in errors(at)), errors(at)


def test_state_dict_upload_with_its_architecture_is_summarised():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.squeezenet1_1(weights=None)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    at = new_app(model_source="Upload a file").run()
    at.sidebar.selectbox(key="model_arch").set_value("squeezenet1_1")
    at.sidebar.get("file_uploader")[0].upload("my-squeezenet.pth", buf.getvalue())
    at.run()
    assert_ran_cleanly(at)
    assert not errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Quantizable layers"] == str(len(find_layers(model)))
    assert metrics["Parameters"] == f"{sum(p.numel() for p in model.parameters()):,}"
    # the upload is remembered when the user moves to another page
    at.switch_page("app_pages/explore.py").run()
    assert_ran_cleanly(at)
    assert not errors(at)
    assert at.session_state["settings"].model_name == "my-squeezenet.pth"
    assert len(at.get("plotly_chart")[-1].proto.spec) > 0


def test_model_needing_a_download_says_what_it_needs():
    import torchvision

    missing = [n for n in ("resnet18", "mobilenet_v2", "resnet34")
               if not torchvision_cache_path(torchvision.models.get_model_weights(n).DEFAULT.url).is_file()]
    if not missing:
        pytest.skip("every candidate's weights are already cached here")
    name = missing[0]
    at = new_app(model_name=name).run()
    assert_ran_cleanly(at)
    infos = [i.value for i in at.info]
    assert any(name in i and "download.pytorch.org" in i for i in infos), infos
    assert at.button(key="allow_download").label.startswith("Download")
    assert not errors(at)


def test_missing_imagenette_offers_a_download_instead_of_failing(tmp_path):
    at = new_app(data_kind="Imagenette", imagenette_dir=str(tmp_path / "imagenette")).run()
    assert_ran_cleanly(at)
    assert not errors(at)
    assert any("Imagenette" in i.value and "is not in" in i.value for i in at.info)
    assert at.button(key="download_imagenette").label == "Download Imagenette"
    assert at.metric  # the model summary is unaffected
