"""Evaluation folders: both layouts, subsets, unreadable images, clear errors."""
import numpy as np
import pytest
from PIL import Image

from mixquant_core.data.image_sets import open_image_folder, open_imagenette
from mixquant_core.data.load import load_tensors
from mixquant_core.errors import DatasetError
from mixquant_core.models.preprocess import Preprocess


def _img(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def flat_folder(tmp_path):
    (tmp_path / "images").mkdir()
    lines = []
    for i in range(5):
        _img(tmp_path / "images" / f"img{i}.png", i)
        lines.append(f"img{i}.png {i * 100}")
    (tmp_path / "images" / "img2.png").write_bytes(b"not an image")  # unreadable: skipped, counted
    (tmp_path / "labels.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "classes.txt").write_text("\n".join(f"n{i:08d} class {i}" for i in range(1000)))
    return tmp_path


def test_flat_folder_with_labels_txt(flat_folder):
    images = open_image_folder(flat_folder)
    assert [p.rsplit("/", 1)[1] for p in images.paths] == [f"img{i}.png" for i in range(5)]
    assert images.labels == [0, 100, 200, 300, 400]
    assert images.class_names[300] == "class 300"
    sub = images.subset(3)
    assert sub.labels == [0, 100, 200] and images.subset(3).paths == sub.paths  # deterministic
    data = load_tensors(images, Preprocess(32, 28).transform())
    assert data.images.shape == (4, 3, 28, 28)
    assert data.labels.tolist() == [0, 100, 300, 400]
    assert len(data.skipped) == 1 and data.skipped[0].endswith("img2.png")


def test_image_folder_layout(tmp_path):
    for c, wnid in enumerate(["n01440764", "n01443537"]):
        (tmp_path / wnid).mkdir()
        for i in range(2):
            _img(tmp_path / wnid / f"{i}.jpg", 10 * c + i)
    images = open_image_folder(tmp_path)
    assert images.labels == [0, 0, 1, 1]
    # with the ImageNet class list beside it, WNIDs map to their ImageNet indices
    (tmp_path / "classes.txt").write_text("n01440764 tench\nn01443537 goldfish\n".replace("n01440764", "n00000001\nn01440764"))
    assert open_image_folder(tmp_path).labels == [1, 1, 2, 2]


def test_empty_or_unlabeled_or_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="no labels.txt and no class subfolders"):
        open_image_folder(tmp_path)
    (tmp_path / "labels.txt").write_text("")
    with pytest.raises(DatasetError, match="holds no labelled images"):
        open_image_folder(tmp_path)
    (tmp_path / "labels.txt").write_text("a.jpg dog\n")
    with pytest.raises(DatasetError, match="line 1 is not 'FILENAME LABEL'"):
        open_image_folder(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        open_image_folder(tmp_path / "nope")


def test_all_unreadable_is_an_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"junk")
    (tmp_path / "labels.txt").write_text("a.jpg 3\n")
    with pytest.raises(DatasetError, match="none of the 1 images"):
        load_tensors(open_image_folder(tmp_path), Preprocess(32, 28).transform())


def test_imagenette_offline_is_a_clear_error(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets.utils as dsu

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(dsu, "download_url", refuse)
    monkeypatch.setattr(dsu, "download_and_extract_archive", refuse)
    import torchvision.datasets.imagenette as inet

    monkeypatch.setattr(inet, "download_and_extract_archive", refuse)
    with pytest.raises(DatasetError, match="Imagenette"):
        open_imagenette(tmp_path)
