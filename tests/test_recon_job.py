"""studio_ui.recon_job without Streamlit: a reconstruction thread that finishes, fails, cancels,
refuses a second job, and holds the compute lock only to copy the model."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from mixquant_core.errors import MixQuantError
from mixquant_core.models.registry import LoadedModel
from mixquant_core.models.preprocess import Preprocess
from mixquant_core.recon.reconstruct import ReconConfig, reconstruct_from_folder
from recon_support import MIXED_BITS, tiny_chain, workspace
from studio_ui import recon_job
from studio_ui.recon_job import CANCELLED, DONE, FAILED, JobRefused, ReconJob

WAIT = 60  # seconds: a tiny job takes well under one, even on a loaded machine
QUICK = ReconConfig(iters=5, batch_size=4, seed=3, eval_samples=8)
ENDLESS = ReconConfig(iters=10**7, batch_size=2, seed=0, eval_samples=4)  # ends only when cancelled


pytestmark = pytest.mark.usefixtures("one_thread")  # recon_support's fixture, for every test here


@pytest.fixture
def loaded():
    return LoadedModel(tiny_chain(), "tiny_chain", "file", Preprocess(resize=32, crop=24), fingerprint="test")


@pytest.fixture
def plan(loaded):
    return workspace(loaded.model).plan_from_bits(MIXED_BITS, qem=12.0)


@pytest.fixture
def calib_dir(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return str(folder)


def new_job(loaded, plan, calib_dir, cfg=QUICK, n=6) -> ReconJob:
    return ReconJob(("file", "test", None), loaded.name, plan, calib_dir, n, cfg)


_started = []


@pytest.fixture(autouse=True)
def no_job_outlives_its_test():
    yield
    while _started:  # even when a test failed half-way, e.g. with an ENDLESS job running
        job = _started.pop()
        job.cancel()
        job.wait(WAIT)


def started(jobs, job, loaded, lock=None):
    _started.append(job)
    return recon_job.start(jobs, job, loaded, lock or threading.RLock())


def test_job_gives_the_cores_result_and_leaves_the_model_alone(loaded, plan, calib_dir):
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    job = started([], new_job(loaded, plan, calib_dir), loaded)
    assert job.wait(WAIT), job.stage
    assert job.status == DONE and job.error is None and job.fraction == 1.0
    assert job.label == "QEM 12"
    assert list(job.result.layers) == list(plan.layers)
    assert {n: q.nbits for n, q in job.result.layers.items()} == plan.bits
    assert job.result.calib_images == 6 and len(job.result.blocks) == 4
    # the same codes as the core's own entry point (what `mixquant reconstruct` runs) with the same config
    direct = reconstruct_from_folder(loaded, plan, calib_dir, 6, QUICK)
    for name, q in direct.layers.items():
        assert torch.equal(job.result.layers[name].codes, q.codes), name
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_failure_is_one_line_and_no_exception(loaded, plan, tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(3):
        (junk / f"bad{i}.jpg").write_bytes(b"not an image")
    job = started([], new_job(loaded, plan, str(junk), n=3), loaded)
    assert job.wait(WAIT)
    assert job.status == FAILED and job.result is None
    assert "none of the 3 images" in job.error and "\n" not in job.error


def test_cancel_ends_the_job_and_a_second_job_is_refused_meanwhile(loaded, plan, calib_dir):
    jobs = []
    job = started(jobs, new_job(loaded, plan, calib_dir, ENDLESS), loaded)
    with pytest.raises(JobRefused, match="already running"):
        started(jobs, new_job(loaded, plan, calib_dir), loaded)
    assert jobs == [job]
    job.cancel()
    assert job.wait(WAIT)
    assert job.status == CANCELLED and job.result is None and job.error is None
    # once it has ended, a new job may start
    again = started(jobs, new_job(loaded, plan, calib_dir), loaded)
    assert again.wait(WAIT) and again.status == DONE
    assert jobs == [again]  # the cancelled job is not kept; a finished one would be


def test_lock_is_held_only_to_copy_the_model(loaded, plan, calib_dir):
    lock = threading.RLock()
    with lock:  # another page is evaluating: the job waits for the model, it does not copy half-quantized weights
        job = started([], new_job(loaded, plan, calib_dir, ENDLESS), loaded, lock)
        job._thread.join(0.5)
        assert job.running and job.stage.startswith("waiting for the model")
    for _ in range(200):  # the job gets past the copy ...
        if not job.stage.startswith("waiting"):
            break
        job._thread.join(0.05)
    assert not job.stage.startswith("waiting")
    # ... and from then on every other computation can take the lock while it runs
    assert lock.acquire(timeout=5)
    lock.release()
    assert job.running


def test_finished_job_kept_while_the_next_runs(loaded, plan, calib_dir):
    jobs = []
    first = started(jobs, new_job(loaded, plan, calib_dir), loaded)
    assert first.wait(WAIT) and first.status == DONE
    second = started(jobs, new_job(loaded, plan, calib_dir, ENDLESS), loaded)
    assert jobs == [first, second]
    assert recon_job.latest(jobs) is second and recon_job.running(jobs) is second
    assert recon_job.latest_done(jobs, first.model_key) is first
    assert recon_job.latest_done(jobs, ("registry", "other")) is None


def test_quick_checks_refuse_at_once(loaded, plan, calib_dir, tmp_path):
    recon_job.check_can_start(loaded, plan, calib_dir, 4)
    with pytest.raises(MixQuantError, match="needs a calibration folder"):
        recon_job.check_can_start(loaded, plan, "  ", 4)
    with pytest.raises(MixQuantError):
        recon_job.check_can_start(loaded, plan, str(tmp_path / "missing"), 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MixQuantError, match="holds no images"):
        recon_job.check_can_start(loaded, plan, str(tmp_path / "empty"), 4)
    other = LoadedModel(tiny_chain(width=4), "tiny_chain", "file", Preprocess(resize=32, crop=24))
    with pytest.raises(MixQuantError):
        recon_job.check_can_start(other, plan, calib_dir, 4)
    unsupported = LoadedModel(torch.nn.Module(), "odd", "file", Preprocess(resize=32, crop=24))
    with pytest.raises(MixQuantError, match="reconstruction supports"):
        recon_job.check_can_start(unsupported, plan, calib_dir, 4)
