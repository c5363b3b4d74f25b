"""Evaluation sets in bounded memory: uint8 pixels kept when they fit, streamed from the files when not,
with the same numbers as the float32 tensors decoded before (issue #14)."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from mixquant_core.data.image_sets import EvalTensors, open_image_folder
from mixquant_core.data.load import load_tensors
from mixquant_core.data.streaming import StreamedImages
from mixquant_core.errors import DatasetError, MixQuantError
from mixquant_core.models.preprocess import Preprocess
from mixquant_core.models.registry import LoadedModel, fingerprint
from mixquant_core.evaluations import Evaluations
from mixquant_core.workspace import Workspace

PRE = Preprocess(resize=36, crop=32)


def write_folder(root, n=23, bad=(4, 17)):
    """``n`` random JPEG/PNG images of varied sizes and labels.txt; the images at ``bad`` are corrupt
    (one with a valid JPEG header but a truncated body, one not an image at all)."""
    rng = np.random.default_rng(0)
    root.mkdir(exist_ok=True)
    lines, names = [], []
    for i in range(n):
        h, w = int(rng.integers(30, 60)), int(rng.integers(30, 60))
        names.append(f"img{i:03d}.{'png' if i % 3 == 0 and i not in bad else 'jpg'}")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / names[-1])
        lines.append(f"{names[-1]} {i % 10}")
    (root / names[bad[0]]).write_bytes((root / names[bad[0]]).read_bytes()[:300])  # header, truncated body
    (root / names[bad[1]]).write_bytes(b"not an image at all")
    (root / "labels.txt").write_text("\n".join(lines) + "\n")
    return open_image_folder(root)


def test_kept_set_is_uint8_and_normalises_to_the_float_pipeline_bit_for_bit(tmp_path):
    images = write_folder(tmp_path / "set")
    kept = load_tensors(images, PRE)
    old = load_tensors(images, PRE.transform())  # the float32 path of before: PIL resize, ToTensor, Normalize
    assert isinstance(kept, EvalTensors) and kept.images.dtype == torch.uint8
    assert kept.nbytes == len(kept) * (3 * 32 * 32 + 8)  # a quarter of float32's bytes, plus the label
    assert sorted(kept.skipped) == sorted(old.skipped) and len(kept.skipped) == 2
    assert torch.equal(kept.labels, old.labels)
    x = torch.cat([b for b, _ in kept.batches(5)])
    assert x.dtype == torch.float32 and x.shape == old.images.shape
    # Same arithmetic as ToTensor + Normalize: only the decoder/resize may move a pixel by a level or two.
    assert (x - old.images).abs().max() <= 3 / 255 / min(PRE.std) + 1e-6
    assert torch.equal(PRE.normalize(kept.images), kept.inputs())


def test_normalising_into_a_reused_buffer_gives_the_same_inputs(tmp_path):
    kept = load_tensors(write_folder(tmp_path / "set"), PRE)
    buffer = torch.full((8, 3, 32, 32), float("nan"))
    for pixels, _ in kept.pixel_batches(8):  # the last batch is shorter than the buffer
        expected = PRE.normalize(pixels)
        got = kept.to_inputs(pixels, buffer)
        assert got.data_ptr() == buffer.data_ptr() and torch.equal(got, expected)
    floats = expected.clone()
    assert torch.equal(PRE.normalize(floats), PRE.normalize(expected)) and torch.equal(floats, expected)  # input untouched


def test_streamed_set_gives_the_same_batches_labels_skips_and_key(tmp_path):
    images = write_folder(tmp_path / "set")
    kept = load_tensors(images, PRE)
    streamed = load_tensors(images, PRE, cache_mb=0)
    assert isinstance(streamed, StreamedImages)
    assert len(streamed) == len(kept) == 21 and streamed.image_shape == kept.image_shape
    assert streamed.fingerprint == kept.fingerprint  # same numbers, so stored results serve both
    for batch_size in (1, 4, 8):
        got = list(streamed.batches(batch_size))
        assert [len(y) for _, y in got] == [len(y) for _, y in kept.batches(batch_size)]
        assert torch.equal(torch.cat([x for x, _ in got]), kept.inputs())
        assert torch.equal(torch.cat([y for _, y in got]), kept.labels)
    assert sorted(streamed.skipped) == sorted(kept.skipped)
    assert streamed.origins == kept.origins


def test_a_body_found_corrupt_during_a_pass_is_left_out_the_same_way(tmp_path):
    images = write_folder(tmp_path / "set", n=12, bad=(0, 1))
    victim = images.paths[5]
    with open(victim, "rb") as f:
        raw = f.read()
    with open(victim, "wb") as f:
        f.write(raw[:int(len(raw) * 0.6)])  # the header reads fine, the pixels do not
    kept = load_tensors(images, PRE)
    streamed = load_tensors(images, PRE, cache_mb=0)
    assert len(streamed) == len(kept) + 1 and victim not in streamed.skipped  # not known before a pass
    for _ in range(2):  # every pass leaves out the same image, so plans stay paired image by image
        got = list(streamed.batches(4))
        assert torch.equal(torch.cat([x for x, _ in got]), kept.inputs())
        assert torch.equal(torch.cat([y for _, y in got]), kept.labels)
    assert sorted(streamed.skipped) == sorted(kept.skipped)


def test_budget_decides_kept_or_streamed(tmp_path, monkeypatch):
    images = write_folder(tmp_path / "set", n=10, bad=(2, 3))
    need_mb = len(images) * 3 * 32 * 32 / 1e6
    assert isinstance(load_tensors(images, PRE, cache_mb=need_mb * 1.01), EvalTensors)
    assert isinstance(load_tensors(images, PRE, cache_mb=need_mb * 0.99), StreamedImages)
    monkeypatch.setenv("MIXQUANT_CACHE_MB", "0")
    assert isinstance(load_tensors(images, PRE), StreamedImages)
    monkeypatch.setenv("MIXQUANT_CACHE_MB", "lots")
    with pytest.raises(MixQuantError, match="MIXQUANT_CACHE_MB: expected a number between 0 and"):
        load_tensors(images, PRE)
    with pytest.raises(MixQuantError, match="cache size in MB: must be between 0 and"):
        load_tensors(images, PRE, cache_mb=-1)


def test_streamed_set_of_unreadable_files_is_one_clear_error(tmp_path):
    root = tmp_path / "junk"
    root.mkdir()
    for i in range(3):
        (root / f"x{i}.jpg").write_bytes(b"junk")
    (root / "labels.txt").write_text("".join(f"x{i}.jpg 1\n" for i in range(3)))
    with pytest.raises(DatasetError, match="none of the 3 images"):
        load_tensors(open_image_folder(root), PRE, cache_mb=0)


def test_a_pass_stopped_early_leaves_no_decoding_thread(tmp_path):
    streamed = load_tensors(write_folder(tmp_path / "set", n=60), PRE, cache_mb=0)
    before = {t.ident for t in threading.enumerate()}
    passes = streamed.batches(2)
    next(passes)
    assert any(t.name.startswith("mixquant-decode") for t in threading.enumerate())
    passes.close()  # what an early stop or an error does to the generator
    left = [t for t in threading.enumerate() if t.ident not in before and t.name.startswith("mixquant-decode")]
    assert left == []


def test_prefetch_is_bounded(tmp_path, monkeypatch):
    streamed = load_tensors(write_folder(tmp_path / "set", n=60, bad=(0, 1)), PRE, cache_mb=0)
    streamed.prefetch = 3
    started = []
    real = streamed._decode_batch
    monkeypatch.setattr(streamed, "_decode_batch", lambda a, b: (started.append(a), real(a, b))[1])
    passes = streamed.pixel_batches(4)
    next(passes)
    # the consumer took one batch: at most that one plus ``prefetch`` more were ever started
    assert len(started) <= 1 + streamed.prefetch
    passes.close()


def test_workspace_sweep_on_streamed_equals_kept(tmp_path, tiny_model):
    images = write_folder(tmp_path / "set", n=40)
    pre = Preprocess(resize=10, crop=8)
    loaded = LoadedModel(tiny_model, "tiny", "file", pre, fingerprint(tiny_model))
    rows = {}
    for name, budget in (("kept", None), ("streamed", 0)):
        data = load_tensors(images, pre, cache_mb=budget)
        ev = Evaluations(Workspace(loaded, bits=(8, 4, 2), device="cpu", engine="torch"))
        rows[name] = [r.to_dict() for r in ev.sweep(data, [1.0, 1e6])]
        hits = ev.evaluate_bits(ev.ws.uniform(2), data).hit1
        rows[name + "-hits"] = hits.tolist()
    assert rows["kept"] == rows["streamed"] and rows["kept-hits"] == rows["streamed-hits"]


@pytest.mark.data
@pytest.mark.slow
def test_lite0_same_top1_top5_as_the_float_pipeline_on_300_images(lite0, val_dir):
    """The issue's check: kept uint8 pixels and the streamed set give today's numbers, image by image."""
    images = open_image_folder(val_dir).subset(300)
    before = Evaluations(Workspace(lite0, device="cpu")).evaluate_bits(None, load_tensors(images, lite0.preprocess.transform()))
    for data in (load_tensors(images, lite0.preprocess), load_tensors(images, lite0.preprocess, cache_mb=0)):
        now = Evaluations(Workspace(lite0, device="cpu")).evaluate_bits(None, data)
        assert (now.top1, now.top5) == (before.top1, before.top5)
        assert np.array_equal(now.hit1, before.hit1) and np.array_equal(now.hit5, before.hit5)
        assert now.top1 > 75.0


def test_an_oversized_file_is_skipped_unopened_by_every_decode_path(tmp_path, monkeypatch):
    from mixquant_core.data import decode

    images = write_folder(tmp_path / "set", n=6, bad=(1, 2))
    big = max(images.paths, key=os.path.getsize)
    monkeypatch.setattr(decode, "MAX_FILE_BYTES", os.path.getsize(big) - 1)  # only the largest file is over the bound
    opened = []
    real_open = decode.Image.open
    monkeypatch.setattr(decode.Image, "open", lambda p, *a, **k: (opened.append(str(p)), real_open(p, *a, **k))[1])
    for data in (load_tensors(images, PRE), load_tensors(images, PRE, cache_mb=0), load_tensors(images, PRE.transform())):
        assert big in data.skipped and len(data) == 3, type(data).__name__
    assert big not in opened and opened
