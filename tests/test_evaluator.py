"""The Evaluator (evaluation/evaluator.py) and the per-caller Evaluations over one shared Workspace:
a Workspace's settings cannot be changed once made, each caller's choices and tally are its own,
the in-memory cache stays bounded, and the time-sized subset rule (evaluation/timing.py)."""
from __future__ import annotations

import threading

import pytest
import torch

from mixquant_core.data.image_sets import EvalTensors
from mixquant_core.errors import MixQuantError
from mixquant_core.evaluation import evaluator as evaluator_module
from mixquant_core.evaluation.timing import Throughput, measure_throughput, subset_for_time
from mixquant_core.evaluations import Evaluations
from mixquant_core.models.preprocess import Preprocess
from mixquant_core.models.registry import LoadedModel, fingerprint
from mixquant_core.workspace import Workspace


@pytest.fixture
def ws(tiny_model):
    loaded = LoadedModel(tiny_model, "tiny", "file", Preprocess(resize=8, crop=8), fingerprint(tiny_model))
    return Workspace(loaded, bits=(8, 4, 2), device="cpu", engine="torch")


def tiny_data(n: int = 24, seed: int = 0) -> EvalTensors:
    g = torch.Generator().manual_seed(seed)
    return EvalTensors(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize("name, value", [("early_stop", True), ("store", None), ("quantizer", "symmetric"),
                                         ("bits", (8, 2)), ("evaluator", None), ("layers", [])])
def test_a_workspace_cannot_be_changed_once_made(ws, name, value):
    before = ws.__dict__.get(name)
    with pytest.raises(AttributeError, match="fixed when the Workspace is made"):
        setattr(ws, name, value)
    assert ws.__dict__.get(name) is before


def test_each_caller_counts_its_own_evaluations(ws):
    data = tiny_data()
    first, second = Evaluations(ws), Evaluations(ws)
    first.evaluate_plans([None, ws.uniform(8), ws.uniform(2)], data)
    assert (first.tally.evaluated, first.tally.distinct) == (3, 3)
    second.evaluate_bits(ws.uniform(2), data)  # measured by the first caller: from memory
    assert (second.tally.evaluated, second.tally.from_store, second.tally.distinct) == (0, 0, 1)
    assert first.tally.evaluated == 3


def test_threads_with_different_early_stop_each_get_their_own_rule(ws):
    """One thread evaluates with early stop while another evaluates without, on one Workspace: the
    one without must see full evaluations only, whatever the other did."""
    images = tiny_data(200).images
    with torch.no_grad():
        labels = ws.loaded.model(images).argmax(1)  # float32 is right on every image: 2 bits is hopeless
    data = EvalTensors(images, labels)
    full, hopeful = Evaluations(ws), Evaluations(ws, early_stop=True)
    plans = [ws.uniform(2), ws.uniform(4), ws.uniform(8)]
    seen = []

    def run(ev):
        for _ in range(3):
            for bits in plans:
                seen.append((ev.early_stop, ev.evaluate_bits(bits, data)))

    threads = [threading.Thread(target=run, args=(ev,)) for ev in (hopeful, full, hopeful, full)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert any(m.stopped_early for early, m in seen if early)  # early stop did happen, beside them
    assert all(m.images == len(data) and not m.stopped_early for early, m in seen if not early)


def test_the_metrics_cache_stays_bounded(ws, monkeypatch):
    monkeypatch.setattr(evaluator_module, "CACHE_ENTRIES", 3)
    ev = Evaluations(ws)
    for seed in range(5):
        ev.evaluate_bits(None, tiny_data(8, seed))
    assert len(ws.evaluator._cache) == 3
    ev.evaluate_bits(None, tiny_data(8, 4))  # the newest is still there
    assert ev.tally.evaluated == 5


def test_subset_for_time_picks_the_largest_that_fits():
    fast, slow = Throughput(1000.0, 0.05), Throughput(50.0, 0.05)
    assert subset_for_time(1300, fast, plans=14) == 1300  # 14 x 1.35 s
    assert subset_for_time(1300, Throughput(250.0, 0.05), plans=14) == 500  # 28.7 s; all would be 73 s
    assert subset_for_time(1300, slow, plans=14) == 100  # nothing fits: the smallest
    assert subset_for_time(60, slow, plans=14) == 60  # a set smaller than every choice is used whole
    with pytest.raises(MixQuantError):
        subset_for_time(0, fast, plans=14)


def test_measured_throughput_is_positive_and_the_evaluator_keeps_it(ws):
    calls = []
    speed = measure_throughput(lambda data: calls.append(len(data)), (3, 8, 8))
    assert calls == [8, 8, 40] and speed.images_per_second > 0 and speed.seconds_per_plan >= 0
    first = ws.evaluator.throughput((3, 8, 8))
    assert first.images_per_second > 0 and ws.evaluator.throughput((3, 8, 8)) is first
