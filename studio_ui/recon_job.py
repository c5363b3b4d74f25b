"""A reconstruction (AdaRound + BRECQ) running in a background thread, so the app stays usable.

No Streamlit here: the thread has no script context and must never draw. Pages read the job's
fields (status, fraction, stage, result) from their own runs, polling. The work itself is
mixquant_core.recon.reconstruct.reconstruct_from_folder, the call behind `mixquant reconstruct`.

One job per session: a session keeps its jobs in a list (newest last) and ``start`` refuses a
second while one runs. Cancel is cooperative: the progress callback raises JobCancelled at the
core's next progress step, which unwinds its loops.
"""
from __future__ import annotations

import copy
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional

from mixquant_core.recon.blocks import model_stages
from mixquant_core.errors import MixQuantError, one_line
from mixquant_core.models.registry import LoadedModel
from mixquant_core.plans.plan import Plan
from mixquant_core.recon.reconstruct import ReconConfig, ReconResult, reconstruct_from_folder
from mixquant_core.data.image_sets import open_calibration_folder

log = logging.getLogger(__name__)
RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"
_ids = itertools.count(1)


class JobCancelled(Exception):
    """Raised by a job's progress callback once Cancel was pressed."""


class JobRefused(MixQuantError):
    """A second job asked for while this session's first still runs."""


@dataclass(eq=False)
class ReconJob:
    model_key: tuple  # Settings.model_key of the model the codes are learned for
    model_name: str
    plan: Plan
    calib_dir: str
    calib_images: int
    config: ReconConfig
    id: int = field(default_factory=lambda: next(_ids))
    status: str = RUNNING
    stage: str = "starting"
    fraction: float = 0.0
    started: float = field(default_factory=time.monotonic)
    ended: Optional[float] = None
    result: Optional[ReconResult] = None
    error: Optional[str] = None
    evaluations: Dict[tuple, object] = field(default_factory=dict)  # filled by the page: eval-set key -> Metrics
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: Optional[threading.Thread] = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return "a plan without QEM" if self.plan.qem is None else f"QEM {self.plan.qem:.4g}"

    @property
    def running(self) -> bool:
        return self.status == RUNNING

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the job ends (or ``timeout`` seconds); True once it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def _progress(self, done: int, total: int, what: str) -> None:
        if self._cancel.is_set():
            raise JobCancelled()
        self.fraction = min(max(done / total, 0.0), 1.0) if total else 1.0
        self.stage = what

    def _run(self, loaded: LoadedModel, lock) -> None:
        try:
            self.stage = "waiting for the model (another computation is using it)"
            with lock:
                # Other pages fake-quantize the shared model's weights in place while they hold the
                # lock, so the job reads a copy taken under it and then runs without the lock.
                # (reconstruct copies once more for its own work; a model is small next to that work.)
                model = copy.deepcopy(loaded.model)
            self._progress(0, 1, "starting")
            result = reconstruct_from_folder(replace(loaded, model=model), self.plan, self.calib_dir,
                                             self.calib_images, self.config, self._progress)
        except JobCancelled:
            self._end(CANCELLED)
        except Exception as exc:  # the thread is the last place to catch it: the page shows one line
            if not isinstance(exc, MixQuantError):
                log.exception("reconstruction job %s failed", self.id)
            self.error = one_line(exc)
            self._end(FAILED)
        else:
            self.result = result
            self._end(DONE)

    def _end(self, status: str) -> None:
        self.ended = time.monotonic()
        self.status = status  # last: a reader that sees the status also sees result/error/ended


def check_can_start(loaded: LoadedModel, plan: Plan, calib_dir: str, calib_images: int) -> None:
    """The quick checks, so an unusable folder, plan or model is refused at once, not from the thread.
    Reads only the model's structure (no weights), so no lock is needed."""
    if not calib_dir.strip():
        raise MixQuantError("reconstruction needs a calibration folder (e.g. $MIXQUANT_DATA/imagenet-calib-1000)")
    if calib_images < 1:
        raise MixQuantError(f"calibration images must be at least 1, got {calib_images}")
    model_stages(loaded.model)  # names the supported architectures otherwise
    plan.check_against(loaded.model)
    open_calibration_folder(calib_dir.strip(), calib_images)


def running(jobs: List[ReconJob]) -> Optional[ReconJob]:
    return next((j for j in jobs if j.running), None)


def latest(jobs: List[ReconJob]) -> Optional[ReconJob]:
    return jobs[-1] if jobs else None


def latest_done(jobs: List[ReconJob], model_key: Optional[tuple] = None) -> Optional[ReconJob]:
    """The newest finished job (for ``model_key`` when given)."""
    return next((j for j in reversed(jobs) if j.status == DONE and (model_key is None or j.model_key == model_key)), None)


def start(jobs: List[ReconJob], job: ReconJob, loaded: LoadedModel, lock) -> ReconJob:
    """Run ``job`` in a daemon thread and append it to the session's ``jobs``.

    Keeps only the newest finished job besides the new one (its codes stay downloadable until the
    new one finishes); older ones are dropped with their codes.
    """
    busy = running(jobs)
    if busy is not None:
        raise JobRefused(f"a reconstruction ({busy.label}, {busy.fraction:.0%} done) is already running in this "
                         "session; wait for it or cancel it first")
    kept = latest_done(jobs)
    jobs[:] = ([kept] if kept is not None else []) + [job]
    job._thread = threading.Thread(target=job._run, args=(loaded, lock), name=f"recon-job-{job.id}", daemon=True)
    job._thread.start()
    return job
