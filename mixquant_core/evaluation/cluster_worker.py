"""What a Ray worker runs: decode one shard of the evaluation set, evaluate one plan on one shard.

Plain functions; ``cluster.RayCluster`` wraps them as Ray tasks. A worker process keeps the model
it was sent (so the ONNX graph is traced once per worker, not once per task) and one engine for
its node: ONNX Runtime on a CPU node, torch on a node with a GPU (``get_engine(name, device)``).
"""
from __future__ import annotations

import math
import os
import warnings
from collections import OrderedDict
from typing import Dict, Optional

import torch
from torch import nn

from ..data.image_sets import EvalTensors, ImageList
from ..data.load import load_tensors
from ..errors import DatasetError
from .engines import get_engine

MODELS_KEPT = 2  # models a worker holds (a session may switch between two)
_models: "OrderedDict[str, nn.Module]" = OrderedDict()
_engines: Dict[tuple, object] = {}


def _node() -> str:
    import ray

    return ray.util.get_node_ip_address()


def decode_shard(images: ImageList, preprocess) -> dict:
    """The shard's images decoded to uint8 pixels, as numpy arrays (Ray hands those to the
    evaluation tasks on the same node without a copy); normalised batch by batch where they run."""
    if not os.path.isdir(images.root):
        raise DatasetError(f"the evaluation folder '{images.root}' does not exist on node {_node()}: "
                           "it must be at the same path on every node")
    data = load_tensors(images, preprocess, cache_mb=math.inf)  # a shard is small: always kept
    if data.skipped:  # the driver read this file's header: the file differs on this node, or its body is corrupt
        raise DatasetError(f"'{data.skipped[0]}' cannot be decoded on node {_node()}, though its header could be read "
                           "when the set was opened: the file is corrupt, or differs on this node (the evaluation "
                           "folder must hold the same files on every node)")
    return shard_arrays(data.images, data.labels, data.origins, preprocess)


def shard_arrays(images: torch.Tensor, labels: torch.Tensor, origins, preprocess) -> dict:
    """What a shard is in the object store: pixels (or float inputs when ``preprocess`` is None) and labels."""
    return {"images": images.detach().cpu().numpy(), "labels": labels.cpu().numpy(), "origins": list(origins),
            "preprocess": preprocess}


def evaluate_shard(model_box: list, shard: dict, bits: Optional[Dict[str, int]], quantizer: str, engine: str) -> tuple:
    """(hit1, hit5, losses) of ``bits`` (None: float32) on one shard. ``model_box`` holds the
    model's object ref, unresolved, so this worker fetches and unpickles it only once."""
    model = _model(model_box[0])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with warnings.catch_warnings():  # the object store's arrays are read-only; nothing writes to them
        warnings.simplefilter("ignore", UserWarning)
        data = EvalTensors(torch.from_numpy(shard["images"]), torch.from_numpy(shard["labels"]),
                           origins=list(shard["origins"]), preprocess=shard["preprocess"])
    metrics = _engine(engine, device).evaluate(model, data, bits, quantizer)
    return metrics.hit1, metrics.hit5, metrics.losses


def _model(ref) -> nn.Module:
    import ray

    key = ref.hex()
    if key not in _models:
        _models[key] = ray.get(ref).eval()
        while len(_models) > MODELS_KEPT:
            _models.popitem(last=False)
    _models.move_to_end(key)
    return _models[key]


def _engine(name: str, device: torch.device):
    key = (name, str(device))
    if key not in _engines:
        engine = get_engine(name, device)
        if hasattr(engine, "threads"):  # ONNX Runtime: the CPUs Ray gave this task, not every core of the node
            engine.threads = _assigned_cpus()
        _engines[key] = engine
    return _engines[key]


def _assigned_cpus() -> int:
    import ray

    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
