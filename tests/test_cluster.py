"""Evaluations on a Ray cluster: a local 2-worker cluster on the CPU gives exactly a single
process's per-image results, a worker that dies has its task retried, an unreachable cluster is
one line, and ``mixquant sweep --cluster ray`` runs end to end."""
from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TinyNet
from mixquant_cli.main import main
from mixquant_core.data.image_sets import EvalTensors, open_image_folder
from mixquant_core.data.load import load_tensors
from mixquant_core.errors import MixQuantError
from mixquant_core.evaluation.cluster import RayCluster, parse_cluster_option
from mixquant_core.evaluation.shards import shard_bounds, shard_size
from mixquant_core.models.preprocess import Preprocess
from mixquant_core.models.registry import LoadedModel

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
PREPROCESS = Preprocess(resize=10, crop=8)
SHARD = 8  # images per shard: the tiny set still makes five shards


class DiesOnceNet(TinyNet):
    """Kills the first worker process that unpickles it (a node lost mid-task), once per marker file."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def __setstate__(self, state):
        try:
            fd = os.open(state["marker"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            os._exit(1)
        super().__setstate__(state)


@pytest.fixture(scope="module")
def cluster():
    # The workers cannot import the tests' modules: send the test models' classes by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules["conftest"])
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    c = RayCluster(num_cpus=2, shard_images=SHARD)
    c.connect()
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """40 labelled images of random pixels, two of them unreadable in the middle of the list."""
    root = tmp_path_factory.mktemp("cluster-images")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(40):
        name = f"img{i:02d}.png"
        if i in (5, 21):
            (root / name).write_bytes(b"not an image")
        else:
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / name)
        lines.append(f"{name} {i % 10}")
    (root / "labels.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def data(image_folder):
    return load_tensors(open_image_folder(image_folder), PREPROCESS, cache_mb=math.inf)  # uint8 pixels, kept


def workspace(model, cluster=None, name="tiny"):
    """A Workspace of ``model`` (on ``cluster``, or here), with this test's own Evaluations of it."""
    from mixquant_core.evaluations import Evaluations
    from mixquant_core.workspace import Workspace

    return Evaluations(Workspace(LoadedModel(model, name, "file", PREPROCESS, f"{name}-weights"), device="cpu",
                                 cluster=cluster))


def trained_tiny() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


def plans_of(ev):
    ws = ev.ws
    return [None, tuple(ws.uniform(8)), tuple(ws.uniform(3)), tuple([2] + [6] * (len(ws.layers) - 1))]


def assert_same(local, remote, plans, data):
    for bits in plans:
        a, b = local.evaluate_bits(bits, data), remote.evaluate_bits(bits, data)
        assert b.images == a.images == len(data)
        assert int(b.hit1.sum()) == int(a.hit1.sum()) and int(b.hit5.sum()) == int(a.hit5.sum())
        assert np.array_equal(b.hit1, a.hit1) and np.array_equal(b.hit5, a.hit5)
        assert np.array_equal(b.losses, a.losses)  # bit for bit, not approximately
        assert (b.top1, b.top5, b.loss) == (a.top1, a.top5, a.loss)


def test_shards_cover_the_set_in_order_at_batch_multiples():
    assert shard_bounds(20, 8) == [(0, 8), (8, 16), (16, 20)]
    assert shard_size(200, 2, 8) == 72  # three even shards (72, 72, 56), none below 64 images
    assert shard_size(1000, 2, 8) == 256  # two per worker
    assert shard_size(100_000, 4, 256) == 1024  # capped: a task holds its shard decoded
    with pytest.raises(MixQuantError):
        shard_bounds(0, 8)


def test_cluster_gives_a_single_process_per_image_results(cluster, data):
    assert len(data.skipped) == 2 and len(data) == 38  # shard cuts fall after skipped images
    model = trained_tiny()
    local, remote = workspace(model), workspace(model, cluster)
    plans = plans_of(local)
    seen = []
    remote.evaluate_plans(plans, data, lambda done, total, what: seen.append((done, total)))
    shards = len(shard_bounds(len(data), SHARD))
    assert remote.tally.evaluated == len(plans) and seen[-1] == (len(plans) * shards, len(plans) * shards)
    assert [done for done, _ in seen] == list(range(1, len(plans) * shards + 1))  # a step per finished task
    local.evaluate_plans(plans, data)
    assert_same(local, remote, plans, data)
    assert remote.tally.evaluated == len(plans)  # read back from the cache, not run again
    assert remote.ws.evaluator.label() == "ray-onnxruntime-cpu"


def test_hand_built_tensors_travel_through_the_object_store(cluster, data):
    model = trained_tiny()
    bare = EvalTensors(data.inputs(), data.labels.clone())  # float inputs, no files behind them
    local, remote = workspace(model), workspace(model, cluster)
    plans = plans_of(local)[:2]
    assert_same(local, remote, plans, bare)


def test_a_streamed_set_is_decoded_by_the_workers(cluster, image_folder, data):
    streamed = load_tensors(open_image_folder(image_folder), PREPROCESS, cache_mb=0)
    assert not hasattr(streamed, "images") and len(streamed) == len(data)  # nothing kept on the driver
    model = trained_tiny()
    local, remote = workspace(model), workspace(model, cluster)
    plans = plans_of(local)[:3]
    assert_same(local, remote, plans, streamed)
    assert_same(local, remote, plans, data)  # and the kept set's numbers are the streamed one's


def dies_once(marker) -> DiesOnceNet:
    torch.manual_seed(1)
    model = DiesOnceNet(str(marker)).eval()
    model.load_state_dict(TinyNet().state_dict())
    return model


def test_a_worker_that_dies_has_its_task_retried(cluster, data, tmp_path):
    plain = TinyNet().eval()
    plain.load_state_dict(dies_once(tmp_path / "unused").state_dict())
    local = workspace(plain)
    plans = plans_of(local)[:3]
    # without retries the death ends the call, in one line
    no_retry = RayCluster(shard_images=SHARD, max_retries=0)
    with pytest.raises(MixQuantError, match="could not finish") as err:
        workspace(dies_once(tmp_path / "died-0"), no_retry, name="dies-once-0").evaluate_plans(plans, data)
    assert "\n" not in str(err.value), str(err.value)
    # with them the task runs again on another worker and the numbers are the single process's
    remote = workspace(dies_once(tmp_path / "died-1"), cluster, name="dies-once-1")
    remote.evaluate_plans(plans, data)
    assert (tmp_path / "died-1").exists()  # a worker did die
    assert_same(local, remote, plans, data)


def test_unreachable_cluster_is_one_line(capsys):
    with pytest.raises(MixQuantError) as err:
        RayCluster("127.0.0.1:1").connect()
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in str(err.value) and "\n" not in str(err.value)
    code = main(["sweep", "--cluster", "ray=127.0.0.1:1", "--data", ".", "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("mixquant: error: cannot reach the Ray cluster")


def test_cluster_option_is_ray_or_ray_address():
    assert parse_cluster_option("ray") is None
    assert parse_cluster_option("ray=10.0.0.5:6379") == "10.0.0.5:6379"
    for bad in ("spark", "ray="):
        with pytest.raises(MixQuantError):
            parse_cluster_option(bad)
    with pytest.raises(SystemExit):
        main(["sweep", "--cluster", "spark", "--data", "."])


def test_cli_sweep_on_the_cluster(cluster, image_folder, capsys, tmp_path):
    argv = ["sweep", "--data", str(image_folder), "--limit", "16", "--qems", "60", "--json", "--no-progress",
            "--device", "cpu", "--store", str(tmp_path / "results.sqlite")]
    assert main(argv + ["--cluster", "ray"]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert remote["engine_label"] == "ray-onnxruntime-cpu" and remote["evaluated"] == remote["distinct_plans"] == 3
    assert main(argv) == 0  # the same sweep in this process: the same numbers
    local = json.loads(capsys.readouterr().out)
    assert local["engine_label"] == "onnxruntime-cpu" and local["evaluated"] == 3
    keep = ("method", "top1", "top5", "loss", "images", "top1_ci", "vs_float32")
    assert [{k: r[k] for k in keep} for r in remote["rows"]] == [{k: r[k] for k in keep} for r in local["rows"]]


def test_app_sidebar_takes_a_ray_address():
    from apptest_support import errors, new_app

    at = new_app(cluster="127.0.0.1:1").run()
    assert at.sidebar.text_input(key="cluster").value == "127.0.0.1:1"
    assert [e for e in errors(at) if e.startswith("Cannot use the Ray cluster: cannot reach the Ray cluster at 127.0.0.1:1")]
    assert not at.exception


@pytest.fixture
def not_ray():
    """Two local listeners that are not Ray: a web server, and a socket that accepts and never answers."""
    import http.server
    import socket
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    web = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    yield {"web": f"127.0.0.1:{web.server_port}", "silent": f"127.0.0.1:{silent.getsockname()[1]}"}
    web.shutdown()
    silent.close()


@pytest.mark.parametrize("kind", ["web", "silent"])
def test_an_address_that_answers_but_is_not_ray_is_one_line_within_seconds(not_ray, kind, capsys):
    """It used to hang the CLI (and the app's sidebar) with Ray's driver retrying its GCS for minutes."""
    import time

    address = not_ray[kind]
    start = time.perf_counter()
    code = main(["sweep", "--cluster", f"ray={address}", "--data", ".", "--no-progress"])
    took = time.perf_counter() - start
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"mixquant: error: {address} answers, but not as a Ray cluster does")
    assert took < 30  # a bound on a hang, not a speed target: the probe waits at most 5 s


def test_app_sidebar_refuses_an_address_that_is_not_ray(not_ray):
    from apptest_support import errors, new_app

    at = new_app(cluster=not_ray["web"]).run()
    assert [e for e in errors(at) if e.startswith("Cannot use the Ray cluster: ") and "not as a Ray cluster" in e]
    assert not at.exception
