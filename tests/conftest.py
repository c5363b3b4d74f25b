"""Shared fixtures: the ImageNet data setting, tiny models, hypothesis profile."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings
from torch import nn

# Seeded, bounded property tests (Brevitas-style profile): reproducible in CI.
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
torch.set_num_threads(min(2, os.cpu_count() or 1))

# The results store lives under MIXQUANT_HOME: tests (and the CLI/app processes they start) get a
# fresh one, never the user's ~/.cache/mixquant; removed when the session ends. A process the tests
# spawn imports this module again (to unpickle TinyNet): it inherits the session's folder.
TEST_HOME = os.environ.get("MIXQUANT_TEST_HOME") or tempfile.mkdtemp(prefix="mixquant-home-")
os.environ["MIXQUANT_TEST_HOME"] = os.environ["MIXQUANT_HOME"] = TEST_HOME


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(TEST_HOME, ignore_errors=True)

DATA_ENV = "MIXQUANT_DATA"
if os.environ.get(DATA_ENV):
    # README passes a relative path; subprocesses (CLI, streamlit) may run elsewhere.
    os.environ[DATA_ENV] = str(Path(os.environ[DATA_ENV]).resolve())


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder named by MIXQUANT_DATA: skip when unset, fail when set but wrong."""
    value = os.environ.get(DATA_ENV)
    if not value:
        pytest.skip(f"{DATA_ENV} is not set: point it at the folder holding imagenet-val-1300")
    root = Path(value)
    assert (root / "imagenet-val-1300" / "labels.txt").is_file(), f"{DATA_ENV}={value} holds no imagenet-val-1300/labels.txt"
    return root


@pytest.fixture(scope="session")
def val_dir(data_root) -> Path:
    return data_root / "imagenet-val-1300"


@pytest.fixture(scope="session")
def lite0():
    from mixquant_core.models.registry import build_model

    return build_model("efficientnet_lite0")


class TinyNet(nn.Module):
    """Every layer kind the tool distinguishes, in a few thousand weights."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.pw(self.dw(x)))
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread is faster, and far faster on a loaded machine (no spin-waits)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
