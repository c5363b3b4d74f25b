"""Evaluations on a Ray cluster: (plan, image shard) tasks, merged into a single process's numbers.

The evaluation set is cut into shards (``shards.py``). Each shard is decoded once, by a task on
some node, from the files at the same path every node sees, into Ray's object store; a set built
by hand (no files) is put there from the driver's tensors instead. The model goes into the object
store once per model. Then every (plan, shard) pair is one task: the worker evaluates the plan on
the shard with its node's engine (``cluster_worker.py``) and returns per-image results, which are
concatenated in shard order into each plan's ``Metrics``. Early stop does not apply here: every
plan sees every image.

A worker that dies has its task run again (Ray's ``max_retries``); a task that fails on the
user's input (a missing folder on a node, a label outside the model's classes) fails the whole
call with that one line, and the other tasks are cancelled.

``ray`` is imported inside functions only: the core works without it.
"""
from __future__ import annotations

import logging
import math
import os
import socket
import threading
from collections import OrderedDict
from typing import List, Optional, Sequence

import torch
from torch import nn

from ..data.image_sets import EvalTensors
from ..errors import MixQuantError, first_line
from .engines import get_engine
from .evaluate import Metrics, Progress, default_batch_size
from .shards import kept_images, merge_shards, shard_bounds, shard_size

DEFAULT_MAX_RETRIES = 3  # runs of a task after its worker died, before the call fails
CONNECT_TIMEOUT_S = 5.0  # Ray itself waits minutes for an address nobody answers at
MODELS_KEPT = 2


def parse_cluster_option(text: str) -> Optional[str]:
    """``ray`` -> None (a local cluster), ``ray=ADDRESS`` -> ADDRESS; anything else is an error."""
    name, sep, address = (text or "").strip().partition("=")
    if name.strip().lower() != "ray":
        raise MixQuantError(f"unknown cluster '{text}': use ray (a local Ray cluster) or ray=ADDRESS (a running one)")
    address = address.strip()
    if sep and not address:
        raise MixQuantError("ray= needs an address, e.g. ray=10.0.0.5:6379, ray=ray://10.0.0.5:10001 or ray=auto")
    return address or None


# A Ray cluster's head answers gRPC, i.e. HTTP/2: to the client's connection preface and an empty
# SETTINGS frame, a server replies with its own SETTINGS frame (frame type 4) at once. Anything
# else at that port (a web server, a silent listener) would keep Ray's driver retrying for minutes.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP2_SETTINGS = 4


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """One line, within about ``timeout``, when nothing listens at HOST:PORT or what listens does not
    speak gRPC as a Ray head does (``auto`` is left to Ray)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise MixQuantError(f"a Ray address is HOST:PORT, ray://HOST:PORT or auto, got '{address}'")
    try:
        conn = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise MixQuantError(f"cannot reach the Ray cluster at {address}: {reason}") from None
    with conn:
        try:
            conn.settimeout(timeout)
            conn.sendall(HTTP2_PREFACE)
            reply = conn.recv(9)
        except OSError:  # a timeout included: a listener that never answers
            reply = b""
    if len(reply) < 4 or reply[3] != HTTP2_SETTINGS:
        raise MixQuantError(f"{address} answers, but not as a Ray cluster does (no gRPC): is that the Ray head's "
                            "GCS port (6379 by default) or Ray Client's (10001)?")


class RayCluster:
    """A Ray cluster to evaluate on: a running one at ``address``, or (None) a local one started on
    first use with ``num_cpus`` workers (default: one per core). Connects lazily."""

    def __init__(self, address: Optional[str] = None, num_cpus: Optional[int] = None,
                 max_retries: int = DEFAULT_MAX_RETRIES, shard_images: Optional[int] = None):
        self.address = address
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self.shard_images = shard_images  # fixed shard size (tests); None: shards.shard_size
        self._models: "OrderedDict[str, object]" = OrderedDict()  # model key -> object ref
        self._shards: Optional[tuple] = None  # (set fingerprint, shard size, [object refs]) of the last set
        self._reached = False  # the address answered once

    def __repr__(self) -> str:
        return f"RayCluster({self.address or 'local'})"

    # --- connection ------------------------------------------------------------------------
    def connect(self):
        """The ``ray`` module, connected (a second call, or a Ray already started here, reuses it)."""
        try:
            import ray
        except ImportError:
            raise MixQuantError("--cluster ray needs Ray: pip install 'ray==2.60.0'") from None
        if self.address and not self._reached:  # even when a Ray is already up here: it may be another cluster
            check_reachable(self.address)
            self._reached = True
        if not ray.is_initialized():
            if not self.address and threading.current_thread() is not threading.main_thread():
                # Ray's local processes die with the thread that started them (Linux's parent-death
                # signal), e.g. at the end of a Streamlit rerun: only a running cluster is safe here.
                raise MixQuantError("a local Ray cluster can only be started from a main thread: start one with "
                                    "'ray start --head' and give its address (e.g. auto or 127.0.0.1:6379)")
            try:
                # "local": a new local Ray, never one that ``ray start`` left running on this machine
                ray.init(address=self.address or "local", num_cpus=None if self.address else self.num_cpus,
                         ignore_reinit_error=True, log_to_driver=False, include_dashboard=False,
                         logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray cluster"
                hint = "" if not self.address or os.environ.get("RAY_AUTH_MODE") else (
                    "; a cluster with token authentication (ray start's default) also needs RAY_AUTH_MODE=token "
                    "here and its token (ray get-auth-token)")
                raise MixQuantError(f"cannot connect to {where}: {first_line(exc)}{hint}") from None
        return ray

    def shutdown(self) -> None:
        import ray

        self._models.clear()
        self._shards = None
        ray.shutdown()

    def workers(self) -> int:
        """CPUs in the cluster: how many tasks run at once."""
        return max(1, int(self.connect().cluster_resources().get("CPU", 1)))

    def node_devices(self) -> List[str]:
        """The devices the live nodes evaluate on: "cuda" for a node with GPUs, else "cpu"."""
        nodes = [n for n in self.connect().nodes() if n.get("Alive")]
        return sorted({"cuda" if n.get("Resources", {}).get("GPU", 0) > 0 else "cpu" for n in nodes}) or ["cpu"]

    def engine_label(self, engine: str = "auto") -> str:
        """What evaluates, for the results store's key: e.g. ``ray-onnxruntime-cpu``, or
        ``ray-onnxruntime-cpu+torch-cuda`` when CPU and GPU nodes share the work."""
        return "ray-" + "+".join(f"{get_engine(engine, d).name}-{d}" for d in self.node_devices())

    def describe(self) -> str:
        return f"a Ray cluster ({self.address or 'local'}, {self.workers()} CPUs)"

    # --- evaluation ------------------------------------------------------------------------
    def evaluate_many(self, model: nn.Module, model_key: str, plans: Sequence[Optional[dict]], quantizer: str,
                      data: EvalTensors, engine: str = "auto", progress: Progress = None) -> List[Metrics]:
        """Metrics of each plan (layer name -> bits; None = float32) on ``data``, in order."""
        ray = self.connect()
        from .cluster_worker import evaluate_shard

        plans = list(plans)
        if not plans:
            return []
        shards = self._shard_refs(ray, data, engine)
        model_ref = self._model_ref(ray, model, model_key)
        task = ray.remote(num_cpus=1, max_retries=self.max_retries)(evaluate_shard)
        where = {}  # task ref -> (plan, shard)
        for s, shard in enumerate(shards):  # shard by shard: a decoded shard is used soon after it is ready
            for p, bits in enumerate(plans):
                where[task.remote([model_ref], shard, bits, quantizer, engine)] = (p, s)
        parts = [[None] * len(shards) for _ in plans]
        try:
            self._collect(ray, where, parts, len(plans), len(shards), progress)
        except BaseException:
            self._shards = None  # a shard that failed to decode must not be reused by the next call
            raise
        return [merge_shards(plan_parts, len(data)) for plan_parts in parts]

    def _collect(self, ray, where: dict, parts: list, plans: int, shards: int, progress: Progress) -> None:
        """Results into ``parts[plan][shard]`` as tasks finish (one progress step each); on any
        failure the rest is cancelled and the cause raised as one line."""
        pending, done = list(where), 0
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    p, s = where[ref]
                    parts[p][s] = ray.get(ref)
                    done += 1
                    if progress:
                        progress(done, len(where), f"plan {p + 1}/{plans}, shard {s + 1}/{shards}")
        except BaseException as exc:
            for ref in pending:
                ray.cancel(ref, force=True)
            if isinstance(exc, ray.exceptions.RayTaskError):
                cause = exc.cause
                if isinstance(cause, MixQuantError):
                    raise cause from None
                raise MixQuantError(f"a cluster task failed: {type(cause).__name__}: {first_line(cause)}") from None
            if isinstance(exc, ray.exceptions.RayError):  # e.g. a worker died on every retry
                raise MixQuantError(f"the cluster could not finish the evaluation ({self.max_retries} retries per task): "
                                    f"{first_line(exc)}") from None
            raise

    def _model_ref(self, ray, model: nn.Module, model_key: str):
        """The model in the object store, put there once per ``model_key``."""
        if model_key not in self._models:
            try:
                self._models[model_key] = ray.put(model)
            except Exception as exc:  # the model must pickle to travel (a TorchScript file does not)
                raise MixQuantError(f"this model cannot be sent to a Ray cluster: {type(exc).__name__}: "
                                    f"{first_line(exc)}") from None
            while len(self._models) > MODELS_KEPT:
                self._models.popitem(last=False)
        self._models.move_to_end(model_key)
        return self._models[model_key]

    def _shard_refs(self, ray, data: EvalTensors, engine: str) -> list:
        """Object refs of the set's shards, decoded on the cluster from the files (or put from the
        driver's tensors when there are none); kept for the next call on the same set."""
        from .cluster_worker import decode_shard, shard_arrays

        size = self.shard_images or shard_size(len(data), self.workers(), self._batch_multiple(engine))
        if self._shards is not None and self._shards[:2] == (data.fingerprint, size):
            return self._shards[2]
        bounds = shard_bounds(len(data), size)
        files = kept_images(data)
        if files is not None:
            decode = ray.remote(num_cpus=1, max_retries=self.max_retries)(decode_shard)
            refs = [decode.remote(files.pick(range(a, b)), data.preprocess) for a, b in bounds]
        else:
            refs = [ray.put(shard_arrays(data.images[a:b], data.labels[a:b], data.origins[a:b], data.preprocess))
                    for a, b in bounds]
        self._shards = (data.fingerprint, size, refs)
        return refs

    def _batch_multiple(self, engine: str) -> int:
        """A multiple of every node's batch size: shards then split into the single process's batches."""
        sizes = []
        for name in self.node_devices():
            device = torch.device(name)
            sizes.append(getattr(get_engine(engine, device), "batch_size", None) or default_batch_size(device))
        return math.lcm(*sizes)
