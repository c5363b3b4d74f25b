"""A sweep on a local Ray cluster with 1 and with 2 workers, beside the same sweep in this process.

    python benchmarks/bench_cluster.py                       # efficientnet_lite0, 200 images, 3 plans
    python benchmarks/bench_cluster.py --images 400 --qems 5,20,80 --repeats 2

Images: the first ``--images`` of ``$MIXQUANT_DATA/imagenet-val-1300``. Plans: float32, int8 and
one MixQuant plan per ``--qems`` value (default one QEM: 3 plans), evaluated by
``Evaluations.evaluate_plans``, each configuration in turn, in this one process:

* ``this process``: the Workspace's own engine (ONNX Runtime on this CPU, all cores), images
  decoded here beforehand (decode time not counted);
* ``ray N workers``: a fresh local cluster (``ray.init(num_cpus=N)``); ``cold`` is the first sweep
  (workers start, import torch, receive the model, trace it to ONNX, decode their shards), ``warm``
  the best of ``--repeats`` more on the same cluster (a new Workspace, so nothing comes from its
  cache; shards and model already on the cluster).

Prints wall seconds, images evaluated per second (images x plans / seconds) and the ratios to one
worker and to this process, measured side by side. The per-image results of every cluster run are
checked against this process's (identical, or the script says which plan differs).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mixquant_core.data.image_sets import default_eval_dir, open_image_folder  # noqa: E402
from mixquant_core.data.load import load_tensors  # noqa: E402
from mixquant_core.evaluation.cluster import RayCluster  # noqa: E402
from mixquant_core.evaluations import Evaluations  # noqa: E402
from mixquant_core.models.registry import load_model  # noqa: E402
from mixquant_core.workspace import Workspace  # noqa: E402


def sweep_seconds(ws: Workspace, plans, data) -> float:
    start = time.perf_counter()
    Evaluations(ws).evaluate_plans(plans, data)
    return time.perf_counter() - start


def differing(reference: Workspace, other: Workspace, plans, data) -> list:
    """Plans whose per-image results differ between the two workspaces (none expected)."""
    out = []
    for k, bits in enumerate(plans):
        a, b = Evaluations(reference).evaluate_bits(bits, data), Evaluations(other).evaluate_bits(bits, data)
        if not (np.array_equal(a.hit1, b.hit1) and np.array_equal(a.hit5, b.hit5) and np.array_equal(a.losses, b.losses)):
            out.append(k)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--data", default=default_eval_dir(), help="evaluation folder (default $MIXQUANT_DATA/imagenet-val-1300)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--qems", default="20", help="comma-separated QEMs (default 20: float32, int8 and one plan)")
    parser.add_argument("--workers", default="1,2", help="local cluster sizes to run (default 1,2)")
    parser.add_argument("--repeats", type=int, default=1, help="warm sweeps per cluster (best one printed)")
    args = parser.parse_args()
    if not args.data:
        sys.exit("set MIXQUANT_DATA or pass --data DIR")

    loaded = load_model(args.model)
    images = open_image_folder(args.data).subset(args.images)
    data = load_tensors(images, loaded.preprocess)
    local = Workspace(loaded, device="cpu")
    _, _, plans = local.sweep_plans([float(q) for q in args.qems.split(",")])
    plans = list(dict.fromkeys(plans))  # float32, int8 and each distinct QEM plan once
    evaluations = len(data) * len(plans)
    print(f"{loaded.name}, {len(data)} images, {len(plans)} plans ({evaluations} image evaluations), "
          f"{os.cpu_count()} cores")

    rows = [("this process", sweep_seconds(local, plans, data), None)]
    for n in (int(w) for w in args.workers.split(",")):
        cluster = RayCluster(num_cpus=n)
        cluster.connect()
        try:
            first = Workspace(loaded, device="cpu", cluster=cluster)
            cold = sweep_seconds(first, plans, data)
            warm = min(sweep_seconds(Workspace(loaded, device="cpu", cluster=cluster), plans, data)
                       for _ in range(max(1, args.repeats)))
            bad = differing(local, first, plans, data)
            if bad:
                print(f"ray {n}: per-image results differ from this process's on plans {bad}")
        finally:
            cluster.shutdown()
        rows.append((f"ray {n} worker{'s' if n > 1 else ''}", cold, warm))

    base = rows[0][1]
    one = next((r for r in rows if r[0].startswith("ray 1 ")), None)
    print(f"{'configuration':16s} {'cold s':>8s} {'warm s':>8s} {'img/s warm':>11s} {'vs 1 worker':>12s} {'vs process':>11s}")
    for name, cold, warm in rows:
        best = warm if warm is not None else cold
        vs_one = f"{one[2] / best:.2f}x" if one is not None and warm is not None else ""
        print(f"{name:16s} {cold:8.2f} {warm if warm is not None else float('nan'):8.2f} {evaluations / best:11.1f} "
              f"{vs_one:>12s} {base / best:10.2f}x")


if __name__ == "__main__":
    main()
