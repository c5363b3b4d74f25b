"""--out is checked before any work and written atomically: a failed write never destroys."""
from __future__ import annotations

import errno
import os

import pytest

from mixquant_cli.main import main
from mixquant_core.files import OutputError, atomic_write, check_output


@pytest.mark.parametrize("command", [["search", "--qem", "50"], ["sweep", "--data", "/nonexistent"],
                                     ["export", "--uniform", "8"], ["allocate", "--avg-bits", "6"]])
def test_out_a_folder_refused_before_work(tmp_path, capsys, command):
    assert main(command + ["--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and err.count("\n") == 1


def test_out_under_proc_or_missing_folder_refused(tmp_path, capsys):
    assert main(["search", "--qem", "50", "--out", "/proc/mixquant-plan.json"]) == 2
    assert "cannot be written" in capsys.readouterr().err
    with pytest.raises(OutputError, match="does not exist"):
        check_output(tmp_path / "no" / "plan.json")


def test_full_disk_leaves_the_old_file_intact(tmp_path, monkeypatch, capsys):
    plan = tmp_path / "plan.json"
    assert main(["search", "--qem", "50", "--out", str(plan), "--no-progress", "--bits", "8,4"]) == 0
    before = plan.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    assert main(["search", "--qem", "2", "--out", str(plan), "--no-progress", "--bits", "8,4"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device; the old file is unchanged" in err
    assert plan.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]  # no temporary left behind


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old contents, longer than the new ones")
    atomic_write(path, "new")
    assert path.read_text() == "new" and oct(path.stat().st_mode & 0o777) == "0o644"


def test_out_equal_to_an_input_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(OutputError, match="is also an input"):
        check_output(tmp_path / "data" / ".." / "plan.json", [tmp_path / "plan.json"])
