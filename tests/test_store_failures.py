"""The results store under bad arguments, unusable files and tampered rows (issue #23, class 3):
nothing is deleted by a bad argument, nothing measured is lost silently, and every failure is one
true line naming the store (and the row), never advice to move a file that is not ours."""
from __future__ import annotations

import math
import os
import resource
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mixquant_cli.main import main
from mixquant_core.errors import MixQuantError
from mixquant_core.evaluation.store import DamagedRowError, ResultsStore, StoreWriteError, open_store
from test_store import REPO, key, metrics, tiny_data, tiny_workspace


def filled_store(path: Path, rows: int = 3) -> ResultsStore:
    store = ResultsStore(path)
    for n in range(rows):
        store.put(key(n), metrics(n), seconds=1.0)
    return store


def exit_code(argv) -> int:
    """``mixquant ARGV``'s exit status, whether the parser refused it (SystemExit) or the command did."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def connect_read_only(monkeypatch) -> None:
    """Every SQLite connection opens the file read-only: what a store without write permission
    gives (root ignores chmod, so the tests cannot make one with it)."""
    real_connect = sqlite3.connect

    def read_only(path, *args, **kwargs):
        return real_connect(Path(path).as_uri() + "?mode=ro", *args, uri=True, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", read_only)


# --- prune: a bad argument deletes nothing --------------------------------------------------
@pytest.mark.parametrize("days", [-5.0, math.nan, math.inf, -math.inf])
def test_prune_refuses_a_bad_age_and_deletes_nothing(tmp_path, days):
    store = filled_store(tmp_path / "r.sqlite")
    with pytest.raises(MixQuantError, match="--older-than must be a number of days >= 0.*nothing was deleted"):
        store.prune(older_than_days=days)
    assert len(store.rows()) == 3
    assert store.prune(older_than_days=0) == 3  # a good age still prunes


def test_cli_prune_with_a_negative_age_exits_2_and_keeps_every_row(tmp_path, capsys):
    path = tmp_path / "r.sqlite"
    filled_store(path)
    for bad in ("--older-than=-5", "--older-than=nan"):
        assert exit_code(["results", "prune", bad, "--store", str(path)]) == 2
        assert "argument --older-than: must be" in one_line(capsys.readouterr().err)  # the parser's bound
    assert len(ResultsStore(path).rows()) == 3


# --- opening: each cause its own line ---------------------------------------------------------
def test_a_file_that_is_not_a_store_is_left_alone_and_never_advised_to_be_moved(tmp_path, capsys):
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    assert main(["results", "list", "--store", str(passwd)]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{passwd} is not a mixquant results store (not an SQLite database)" in line
    assert "mv " not in line and "move it aside" not in line and "unreadable" not in line
    assert passwd.read_text() == "root:x:0:0:root:/root:/bin/bash\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["passwd"]  # no journal made beside it
    foreign = tmp_path / "notes.sqlite"  # someone's own SQLite database: not ours to move either
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE notes (x)")
    con.close()
    with pytest.raises(MixQuantError, match="not a mixquant results store") as refused:
        ResultsStore(foreign)
    assert "mv " not in str(refused.value) and "move it aside" not in str(refused.value)


def test_junk_at_the_default_location_is_ours_to_move_aside(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXQUANT_HOME", str(tmp_path))
    junk = b"this is not a database, but it sits where only mixquant writes" * 10
    (tmp_path / "results.sqlite").write_bytes(junk)
    with pytest.raises(MixQuantError, match=r"not a mixquant results store.*move it aside \(mv '.*results.sqlite'"):
        open_store()
    assert (tmp_path / "results.sqlite").read_bytes() == junk


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs sysfs, a folder where no file can be created")
def test_a_missing_store_in_a_folder_that_refuses_files_says_so(monkeypatch):
    monkeypatch.setenv("MIXQUANT_HOME", "/sys")  # a read-only MIXQUANT_HOME, even for root
    with pytest.raises(StoreWriteError) as refused:
        open_store()
    line = str(refused.value)
    assert "/sys/results.sqlite does not exist and cannot be created in '/sys'" in line
    assert "mv " not in line and "unreadable" not in line and not Path("/sys/results.sqlite").exists()


def test_a_read_only_store_is_refused_before_any_evaluation(tmp_path, monkeypatch, capsys):
    path = tmp_path / "r.sqlite"
    filled_store(path)
    connect_read_only(monkeypatch)

    def no_evaluation(*args, **kwargs):
        raise AssertionError("the model was loaded: the store was not checked before the evaluation")

    monkeypatch.setattr("mixquant_core.models.registry.load_model", no_evaluation)
    assert main(["evaluate", "--int8", "--data", str(tmp_path), "--store", str(path), "--no-progress"]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"results store {path} is not writable" in line and "mv " not in line and "unreadable" not in line
    with pytest.raises(StoreWriteError, match="is not writable"):
        ResultsStore(path)


def limit_file_size(limit: int):
    """A preexec_fn: the child may write files of at most ``limit`` bytes (a full disk, for root too)."""
    def limit_it():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_it


def test_a_file_size_limit_is_named_not_called_unreadable(tmp_path):
    path = tmp_path / "new.sqlite"
    done = subprocess.run([sys.executable, "-m", "mixquant_cli", "results", "list", "--store", str(path)],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          preexec_fn=limit_file_size(1000), timeout=120)
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    # "cannot be written"; "cannot be read or written" where Python (< 3.11) hides which I/O error it was
    assert line.startswith(f"mixquant: error: results store {path} cannot be")
    assert "the disk is full" in line and "a file-size limit was reached" in line
    assert "unreadable" not in line and "mv " not in line


# --- a store that fails after the evaluation: the result is kept ------------------------------
def test_a_full_store_keeps_the_measured_result_and_says_it_was_not_stored(tmp_path, tiny_model, monkeypatch):
    path = tmp_path / "r.sqlite"
    ResultsStore(path)
    real_connect = sqlite3.connect

    def full_disk(*args, **kwargs):  # the file may not grow by a page: SQLite's SQLITE_FULL, as on a full disk
        con = real_connect(*args, **kwargs)
        con.execute("PRAGMA max_page_count = 1")  # clamped to the pages it has
        return con

    monkeypatch.setattr(sqlite3, "connect", full_disk)
    data = tiny_data(600)  # 4.8 kB of per-image losses: the row needs new pages
    ev = tiny_workspace(tiny_model, ResultsStore(path))
    got = ev.evaluate_bits(ev.ws.uniform(4), data)
    expected = tiny_workspace(tiny_model, None).evaluate_bits(ev.ws.uniform(4), data)
    assert got.images == 600 and (got.top1, got.loss) == (expected.top1, expected.loss)
    notes = [n for n in ev.ws.evaluator.notices if "not stored" in n]
    assert len(notes) == 1 and "the disk is full or a file-size limit was reached" in notes[0] and str(path) in notes[0]
    monkeypatch.undo()
    assert ResultsStore(path).rows() == []


# --- tampered rows: one line naming the store and the row -------------------------------------
def tamper(path: Path, row_id: int, column: str, value) -> None:
    con = sqlite3.connect(path)
    con.execute(f"UPDATE evaluations SET {column} = ? WHERE id = ?", (value, row_id))
    con.commit()
    con.close()


def test_tampered_rows_are_one_line_naming_the_store_and_the_row(tmp_path, capsys):
    path = tmp_path / "r.sqlite"
    store = filled_store(path, rows=4)
    ids = {r["bits_hash"]: r["id"] for r in store.rows()}
    bad_bits, bad_top1, bad_blob, intact = (ids[key(n).bits_hash] for n in range(4))
    tamper(path, bad_bits, "bits", "{not json")
    tamper(path, bad_top1, "top1", "abc")
    tamper(path, bad_blob, "hit1", b"\x00")
    with pytest.raises(DamagedRowError, match=rf"results store {path}: row {bad_bits} is damaged \(column bits"):
        store.row(bad_bits)
    with pytest.raises(DamagedRowError, match=rf"row {bad_top1} is damaged \(column top1 holds 'abc'\)"):
        store.row(bad_top1)
    with pytest.raises(DamagedRowError, match=rf"row {bad_blob} is damaged \(column hit1 holds 1 bytes"):
        store.get(key(2))
    with pytest.raises(DamagedRowError, match=rf"row {bad_top1}"):
        store.rows()
    skipped = []
    listed = {r["id"] for r in store.rows(on_damaged=skipped.append)}
    assert listed == {bad_bits, bad_blob, intact}  # a list holds neither the bits nor the blobs
    assert len(skipped) == 1 and skipped[0].startswith(f"results store {path}: row {bad_top1} is damaged")
    assert skipped[0].endswith("; skipped")
    assert store.get(key(3)) is not None  # the intact row still reads

    assert main(["results", "list", "--store", str(path)]) == 0  # list skips a damaged row, one note each
    out, err = capsys.readouterr()
    assert "3 evaluation(s)" in out and f"row {bad_top1} is damaged" in one_line(err)
    for row_id, column in ((bad_bits, "bits"), (bad_top1, "top1")):
        assert main(["results", "show", str(row_id), "--store", str(path)]) == 2
        line = one_line(capsys.readouterr().err)
        assert f"results store {path}: row {row_id} is damaged (column {column}" in line
    assert exit_code(["results", "show", str(2**70), "--store", str(path)]) == 2  # beyond SQLite's integers
    assert f"id: must be between 1 and {2**63 - 1}, got {2**70}" in one_line(capsys.readouterr().err)


def test_a_damaged_row_is_measured_again_and_replaced(tmp_path, tiny_model):
    path = tmp_path / "r.sqlite"
    data = tiny_data(16)
    first = tiny_workspace(tiny_model, ResultsStore(path))
    m = first.evaluate_bits(first.ws.uniform(4), data)
    row_id = ResultsStore(path).rows(model="tiny")[0]["id"]
    tamper(path, row_id, "losses", b"short")
    again = tiny_workspace(tiny_model, ResultsStore(path))
    got = again.evaluate_bits(again.ws.uniform(4), data)
    assert (got.top1, got.loss) == (m.top1, m.loss) and again.tally.evaluated == 1 and again.tally.from_store == 0
    assert any(f"row {row_id} is damaged" in n and "measuring it again" in n for n in again.ws.evaluator.notices)
    key_of_plan = again.ws.evaluator.store_key(again.ws.named(again.ws.uniform(4)), again.ws.quantizer, data)
    assert ResultsStore(path).get(key_of_plan) is not None  # the new row replaced the damaged one
