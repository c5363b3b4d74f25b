"""The results store (evaluation/store.py): round trip, reuse by the Workspace, two writers, bad files."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from mixquant_core.data.image_sets import EvalTensors
from mixquant_core.errors import MixQuantError
from mixquant_core.evaluation.evaluate import Metrics
from mixquant_core.evaluation.store import EvalKey, ResultsStore, default_store_path, open_store
from mixquant_core.models.preprocess import Preprocess
from mixquant_core.models.registry import LoadedModel, fingerprint
from mixquant_core.evaluations import Evaluations
from mixquant_core.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


def key(n: int = 0, **kw) -> EvalKey:
    fields = dict(model_name="tiny", model_fingerprint="f" * 16, quantizer="asymmetric", bits={"a": 8, "b": n},
                  eval_fingerprint="e" * 16, images=64, preprocessing="p", engine="torch-cpu", version="0.1.0")
    fields.update(kw)
    return EvalKey(**fields)


def metrics(seed: int = 0, n: int = 64, stopped: bool = False) -> Metrics:
    rng = np.random.default_rng(seed)
    return Metrics.from_per_image(rng.random(n) < 0.7, rng.random(n) < 0.9, rng.random(n), stopped_early=stopped)


def test_default_location_follows_mixquant_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXQUANT_HOME", str(tmp_path))
    assert default_store_path() == tmp_path / "results.sqlite"
    assert open_store(enabled=False) is None


def test_round_trip_keeps_per_image_results(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    m = metrics(1, n=61)  # not a multiple of 8: packing must keep the count
    store.put(key(), m, seconds=1.5)
    got = store.get(key())
    assert np.array_equal(got.hit1, m.hit1) and np.array_equal(got.hit5, m.hit5)
    assert np.array_equal(got.losses, m.losses) and (got.top1, got.loss) == (m.top1, m.loss)
    assert store.get(key(4)) is None and store.get(key(engine="onnxruntime")) is None
    rows = store.rows()
    assert len(rows) == 1 and rows[0]["top1_lo"] < rows[0]["top1"] < rows[0]["top1_hi"]
    assert store.row(rows[0]["id"])["bits"] == {"a": 8, "b": 0}
    assert sqlite3.connect(tmp_path / "r.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert "top1_lo" in store.to_csv().splitlines()[0]
    assert store.prune(model="other") == 0 and store.prune(model="tiny") == 1 and store.rows() == []


def tiny_workspace(tiny_model, store, early_stop=False) -> Evaluations:
    """A new Workspace (as a new process would make) evaluated with ``store`` and ``early_stop``."""
    loaded = LoadedModel(tiny_model, "tiny", "file", Preprocess(resize=8, crop=8), fingerprint(tiny_model))
    return Evaluations(Workspace(loaded, bits=(8, 4, 2), device="cpu"), store=store, early_stop=early_stop)


def tiny_data(n: int = 40) -> EvalTensors:
    g = torch.Generator().manual_seed(0)
    return EvalTensors(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))


def test_workspace_reuses_stored_results_across_instances(tmp_path, tiny_model):
    path = tmp_path / "r.sqlite"
    data = tiny_data()
    first = tiny_workspace(tiny_model, ResultsStore(path))
    rows = first.sweep(data, [1.0, 1e6])
    assert first.tally.evaluated == first.tally.distinct >= 2 and first.tally.from_store == 0
    again = tiny_workspace(tiny_model, ResultsStore(path))  # a new process would see the same
    assert again.has_results(again.ws.sweep_plans([1.0, 1e6])[2], data)
    rows_again = again.sweep(data, [1.0, 1e6])
    assert again.tally.evaluated == 0 and again.tally.from_store == first.tally.evaluated
    assert [r.to_dict() for r in rows_again] == [r.to_dict() for r in rows]
    assert not again.has_results([again.ws.uniform(4)], data)


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from mixquant_core.evaluation.evaluate import Metrics
    from mixquant_core.evaluation.store import EvalKey, ResultsStore
    store = ResultsStore(sys.argv[1])
    rng = np.random.default_rng(int(sys.argv[2]))
    for i in range(int(sys.argv[3])):
        m = Metrics.from_per_image(rng.random(500) < 0.7, rng.random(500) < 0.9, rng.random(500))
        store.put(EvalKey("tiny", "f", "asymmetric", {"w": sys.argv[2], "i": i}, "e", 500, "p", "torch-cpu", "0.1.0"), m, 0.0)
""")


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "shared.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w), "150"], env=env, stderr=subprocess.PIPE)
             for w in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    assert len(ResultsStore(path).rows()) == 300


def test_many_openers_of_a_new_file_all_get_the_store(tmp_path):
    # Several connections creating one new file at once: each must see either no schema or all of it,
    # and a "locked" that SQLite returns without waiting must be retried, not reported.
    for trial in range(30):
        path = tmp_path / f"new{trial}.sqlite"
        barrier = threading.Barrier(6)
        errors = []

        def open_it():
            barrier.wait()
            try:
                ResultsStore(path)
            except MixQuantError as exc:
                errors.append(str(exc))

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [], f"trial {trial}: {errors[0]}"
    assert ResultsStore(path).rows() == []


def test_corrupt_file_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "results.sqlite"
    ResultsStore(path).put(key(), metrics(), seconds=1.0)
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the schema page overwritten, the SQLite header kept
    path.write_bytes(bytes(data))
    with pytest.raises(MixQuantError, match="results.sqlite is damaged .*left as it is"):
        ResultsStore(path)
    assert path.read_bytes() == bytes(data)


def test_other_schema_versions_are_refused(tmp_path):
    newer = tmp_path / "newer.sqlite"
    ResultsStore(newer)
    con = sqlite3.connect(newer)
    con.execute("PRAGMA user_version = 99")
    con.close()
    with pytest.raises(MixQuantError, match="schema version 99, newer"):
        ResultsStore(newer)
    foreign = tmp_path / "foreign.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE notes (x)")
    con.close()
    with pytest.raises(MixQuantError, match="not a mixquant results store"):
        ResultsStore(foreign)


def test_stopped_early_rows_are_reused_only_with_early_stop(tmp_path, tiny_model):
    path = tmp_path / "r.sqlite"
    data = tiny_data(16)
    ev = tiny_workspace(tiny_model, ResultsStore(path))
    named = {layer.name: 2 for layer in ev.ws.layers}
    key = ev.ws.evaluator.store_key(named, ev.ws.quantizer, data)
    ev.store.put(key, metrics(0, n=8, stopped=True), 0.1)
    plain = tiny_workspace(tiny_model, ResultsStore(path))
    assert plain.evaluate_bits(plain.ws.uniform(2), data).images == 16  # measured again, in full
    ev.store.put(key, metrics(0, n=8, stopped=True), 0.1)
    eager = tiny_workspace(tiny_model, ResultsStore(path), early_stop=True)
    got = eager.evaluate_bits(eager.ws.uniform(2), data)
    assert got.stopped_early and got.images == 8 and eager.tally.from_store == 1


@pytest.mark.data
def test_cli_evaluate_writes_reuses_and_lists_the_store(val_dir, tmp_path):
    store = tmp_path / "cli.sqlite"
    base = [sys.executable, "-m", "mixquant_cli"]
    evaluate = base + ["evaluate", "--int8", "--data", str(val_dir), "--limit", "8", "--no-progress", "--json",
                       "--store", str(store)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.run(evaluate, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert out["top1_ci"][0] <= out["top1"] <= out["top1_ci"][1] and out["images"] == 8
    assert set(out["vs_float32"]) == {"delta_top1", "delta_ci", "p_value"} and out["from_store"] == 0
    again = json.loads(subprocess.run(evaluate, capture_output=True, text=True, env=env, cwd=REPO, timeout=600).stdout)
    assert again["from_store"] == 2 and again["top1"] == out["top1"] and again["vs_float32"] == out["vs_float32"]
    listed = subprocess.run(base + ["results", "list", "--json", "--store", str(store)], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=120)
    assert sorted(r["quantizer"] for r in json.loads(listed.stdout)) == ["asymmetric", "float32"]
    csv_path = tmp_path / "results.csv"
    subprocess.run(base + ["results", "export", "--csv", str(csv_path), "--store", str(store)], env=env, cwd=REPO,
                   check=True, timeout=120, capture_output=True)
    assert len(csv_path.read_text().splitlines()) == 3
    store.write_bytes(b"garbage" * 200)  # no longer a store: one line, left as it was, no advice to move the
    bad = subprocess.run(evaluate, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)  # user's file
    assert bad.returncode == 2 and "not a mixquant results store" in bad.stderr and "mv " not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert store.read_bytes() == b"garbage" * 200


def test_unusable_location_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MixQuantError, match="cannot create the folder of the results store"):
        ResultsStore(blocker / "sub" / "results.sqlite")
    with pytest.raises(MixQuantError, match="is not a file"):
        ResultsStore(tmp_path)
