"""No silent wrong numbers from image folders: unknown labels refused, labels outside the
model's classes named, oversized and non-regular files skipped (never opened), limits >= 1."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mixquant_core.data.image_sets import open_calibration_folder, open_image_folder
from mixquant_core.data.load import load_tensors
from mixquant_core.errors import DatasetError
from mixquant_core.evaluation.evaluate import evaluate
from mixquant_core.models.preprocess import Preprocess

TRANSFORM = Preprocess(32, 28).transform()


def _img(path, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)


def _folder(root, labels=None, n=3):
    (root / "images").mkdir(parents=True)
    for i in range(n):
        _img(root / "images" / f"img{i}.png", i)
    if labels is not None:
        (root / "labels.txt").write_text("".join(f"img{i}.png {lab}\n" for i, lab in enumerate(labels)))
    return root


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "mixquant_cli", *args, "--no-progress"], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": os.getcwd()})


def test_images_without_labels_refused(tmp_path):
    _folder(tmp_path)
    with pytest.raises(DatasetError, match="has images/ but no labels.txt"):
        open_image_folder(tmp_path)
    r = _cli("evaluate", "--data", str(tmp_path), "--bits", "8")
    assert r.returncode == 2 and "no labels.txt" in r.stderr and r.stderr.count("\n") == 1 and not r.stdout


def test_labels_txt_a_directory_or_binary_refused(tmp_path):
    _folder(tmp_path)
    (tmp_path / "labels.txt").mkdir()
    with pytest.raises(DatasetError, match="labels.txt is not a regular file"):
        open_image_folder(tmp_path)
    (tmp_path / "labels.txt").rmdir()
    (tmp_path / "labels.txt").write_bytes(b"\xff\xfe\x00binary\x89PNG")
    with pytest.raises(DatasetError, match="labels.txt is not a text file"):
        open_image_folder(tmp_path)


def test_negative_label_refused_naming_the_line(tmp_path, tiny_model):
    _folder(tmp_path, [1, -7, 2])
    data = load_tensors(open_image_folder(tmp_path), TRANSFORM)
    with pytest.raises(DatasetError, match=r"'img1.png', labels.txt line 2: -7\) has a negative label"):
        evaluate(tiny_model, data)


@pytest.mark.parametrize("labels, line", [([10, 2, -5], "line 1"), ([1, -5, 10], "line 2: -5")])
def test_the_first_bad_line_is_named_whatever_its_kind(tmp_path, tiny_model, labels, line):
    """A label past the model's classes on line 1 and a negative one on line 3: line 1 is the first
    bad line (the negative one used to be reported first, when the folder was read)."""
    _folder(tmp_path, labels)
    data = load_tensors(open_image_folder(tmp_path), TRANSFORM)
    with pytest.raises(DatasetError, match=f"labels.txt {line}\\)"):
        evaluate(tiny_model, data)


def test_label_outside_the_models_classes_names_the_line(tmp_path, tiny_model):
    _folder(tmp_path, [1, 2, 10])  # tiny_model has 10 classes
    data = load_tensors(open_image_folder(tmp_path), TRANSFORM)
    with pytest.raises(DatasetError, match=r"'img2.png', labels.txt line 3\) has label 10, outside the model's 10 classes"):
        evaluate(tiny_model, data)


def test_label_1000_on_lite0_cli_one_line(tmp_path):
    _folder(tmp_path, [5, 1000])
    r = _cli("evaluate", "--data", str(tmp_path))
    assert r.returncode == 2 and "labels.txt line 2) has label 1000, outside the model's 1000 classes" in r.stderr
    assert r.stderr.count("\n") == 1 and not r.stdout


def test_decompression_bomb_skipped_and_counted(tmp_path):
    _folder(tmp_path, [1, 2, 3])
    Image.new("1", (20000, 20000)).save(tmp_path / "images" / "img1.png")  # 400 Mpx: past PIL's bomb limit
    data = load_tensors(open_image_folder(tmp_path), TRANSFORM)
    assert len(data) == 2 and len(data.skipped) == 1 and data.skipped[0].endswith("img1.png")


def test_fifo_skipped_without_being_opened(tmp_path):
    _folder(tmp_path, [1, 2, 3])
    os.remove(tmp_path / "images" / "img0.png")
    os.mkfifo(tmp_path / "images" / "img0.png")  # opening it would block until someone writes
    data = load_tensors(open_image_folder(tmp_path), TRANSFORM)  # returns: never opened
    assert len(data) == 2 and data.skipped[0].endswith("img0.png")


def test_limit_must_be_at_least_one(tmp_path):
    images = open_image_folder(_folder(tmp_path, [1, 2, 3]))
    for bad in (0, -3):
        with pytest.raises(DatasetError, match="at least 1"):
            images.subset(bad)
    r = _cli("evaluate", "--data", str(tmp_path), "--limit", "0")
    assert r.returncode == 2 and "--limit: must be at least 1" in r.stderr


def test_folder_messages_name_the_right_thing(tmp_path):
    with pytest.raises(DatasetError, match="calibration folder '.*nope' does not exist"):
        open_calibration_folder(str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="evaluation folder '/etc/passwd' is not a folder"):
        open_image_folder("/etc/passwd")


def test_calibration_labels_txt_must_be_right_when_present(tmp_path):
    _folder(tmp_path, [1, -7, 2])
    calib = load_tensors(open_calibration_folder(str(tmp_path)), TRANSFORM)
    with pytest.raises(DatasetError, match="line 2: -7\\) has a negative label"):
        calib.check_labels(10, allow_unlabelled=True)
    (tmp_path / "labels.txt").unlink()
    assert open_calibration_folder(str(tmp_path)).labels == [-1, -1, -1]  # plain images: unlabelled, allowed
