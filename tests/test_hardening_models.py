"""Model files are untrusted input: code never runs without --trust-code, and trusted code runs
in a child process with a time limit first."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from hostile_models import looping_script, marker_script
from mixquant_core.errors import ModelUnavailableError, UntrustedCodeError
from mixquant_core.models.registry import load_model

CLI = [sys.executable, "-m", "mixquant_cli"]


def _cli(*args, env=None):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.getcwd(), **(env or {})})


def test_torchscript_refused_without_trust_and_marker_never_written(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "marker"
    marker_script(path, marker)
    for isolate in (False, True):
        with pytest.raises(UntrustedCodeError, match="evil.pt' is TorchScript"):
            load_model(str(path), isolate=isolate)
    assert not marker.exists()
    r = _cli("qe", "--model", str(path), "--no-progress")
    assert r.returncode == 2 and not marker.exists()
    assert r.stderr.count("\n") == 1 and "--trust-code" in r.stderr and "Traceback" not in r.stderr


def test_trusted_torchscript_loads_via_child(tmp_path):
    path, marker = tmp_path / "ok.pt", tmp_path / "marker"
    marker_script(path, marker)
    loaded = load_model(str(path), trust_code=True)
    assert marker.exists()  # the user trusted it: its code ran (in the child, then here)
    x = torch.randn(1, 3, 8, 8)
    assert loaded.model(x).shape == (1, 10)


def test_hanging_file_is_stopped_by_the_time_limit(tmp_path, monkeypatch):
    path = tmp_path / "hang.pt"
    looping_script(path)
    monkeypatch.setenv("MIXQUANT_LOAD_TIMEOUT_S", "20")
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailableError, match=r"hang.pt' took longer than 20 s and was stopped \(time limit"):
        load_model(str(path), trust_code=True)
    assert time.monotonic() - t0 < 60
    r = _cli("qe", "--model", str(path), "--trust-code", "--no-progress", env={"MIXQUANT_LOAD_TIMEOUT_S": "20"})
    assert r.returncode == 2 and "time limit" in r.stderr and r.stderr.count("\n") == 1


def test_memory_limit_stops_a_file_that_explodes(tmp_path, monkeypatch):
    # a state dict bigger than the limit: the child is stopped, this process is untouched
    path = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(64, 1024, 1024)}, path)  # 256 MB
    monkeypatch.setenv("MIXQUANT_LOAD_MEMORY_MB", "64")
    with pytest.raises(ModelUnavailableError, match="memory limit"):
        load_model(str(path), arch="resnet18", isolate=True)


def test_allow_pickle_is_an_alias_of_trust_code(tmp_path):
    path, marker = tmp_path / "ok.pt", tmp_path / "marker"
    marker_script(path, marker)
    r = _cli("qe", "--model", str(path), "--allow-pickle", "--no-progress", "--json", "--bits", "8,4")
    assert r.returncode == 0, r.stderr


def test_messages_name_what_the_user_gave(tmp_path):
    with pytest.raises(ModelUnavailableError, match="'/etc' is not a regular file"):
        load_model("/etc/")
    garbage = tmp_path / "0123abcd.pt"
    garbage.write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(ModelUnavailableError, match="'my model.pt' is not a PyTorch checkpoint"):
        load_model(str(garbage), arch="resnet18", isolate=True, shown_as="my model.pt")
