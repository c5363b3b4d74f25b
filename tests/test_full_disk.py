"""A full disk while writing a model (issue #23, class 4): every writer goes through files.py's
atomic path, so the old file survives, no temporary file is left, and the error is one line."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
from safetensors import SafetensorError

from mixquant_core.export import packed
from mixquant_core.files import OutputError, atomic_save
from recon_support import MIXED_BITS, tiny_chain, workspace
from test_store import REPO
from test_store_failures import limit_file_size

OLD = b"the model exported yesterday"


def run_with_file_size_limit(argv, limit: int = 100_000) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixquant_cli", *argv, "--no-progress"], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          preexec_fn=limit_file_size(limit), timeout=600)


def assert_refused_in_one_line_old_file_kept(done: subprocess.CompletedProcess, out) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    reason = "File too large (a file-size limit was reached); the old file is unchanged"
    assert f"cannot write '{out}': {reason}" in lines[0]
    assert out.read_bytes() == OLD
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary file left behind


def test_export_past_a_file_size_limit_keeps_the_old_file(tmp_path):
    out = tmp_path / "model.safetensors"
    out.write_bytes(OLD)
    done = run_with_file_size_limit(["export", "--uniform", "8", "--model", "efficientnet_lite0", "--out", str(out)])
    assert_refused_in_one_line_old_file_kept(done, out)


@pytest.mark.data
def test_reconstruct_past_a_file_size_limit_keeps_the_old_file(data_root, tmp_path):
    out = tmp_path / "recon.safetensors"
    out.write_bytes(OLD)
    done = run_with_file_size_limit(["reconstruct", "--uniform", "4", "--calib", str(data_root / "imagenet-calib-1000"),
                                     "--calib-images", "2", "--iters", "1", "--batch-size", "2", "--device", "cpu",
                                     "--out", str(out)])
    assert_refused_in_one_line_old_file_kept(done, out)


def test_save_quantized_on_a_full_disk_raises_one_line(tmp_path, monkeypatch):
    """safetensors reports a full disk as SafetensorError, not OSError: it becomes the same line."""
    import safetensors.torch

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"half a model")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    model = tiny_chain()
    plan = workspace(model).plan_from_bits(MIXED_BITS)
    out = tmp_path / "q.safetensors"
    out.write_bytes(OLD)
    with pytest.raises(OutputError, match="No space left on device; the old file is unchanged"):
        packed.save_quantized(out, model, plan, packed.rtn_layers(model, plan))
    assert out.read_bytes() == OLD and sorted(p.name for p in tmp_path.iterdir()) == ["q.safetensors"]


def test_atomic_save_names_a_library_failure_that_is_not_the_disk(tmp_path):
    def broken(path):
        raise SafetensorError("Error while serializing: a tensor is not contiguous\ndetails on a second line")

    with pytest.raises(OutputError) as refused:
        atomic_save(tmp_path / "new.bin", broken, (SafetensorError,))
    assert str(refused.value) == ("cannot write '%s': Error while serializing: a tensor is not contiguous; "
                                  "nothing was written" % (tmp_path / "new.bin"))
    assert list(tmp_path.iterdir()) == []


def test_atomic_save_passes_an_os_error_as_one_line(tmp_path):
    def quota(path):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    with pytest.raises(OutputError, match="Disk quota exceeded; nothing was written"):
        atomic_save(tmp_path / "new.bin", quota)
    assert list(tmp_path.iterdir()) == []
