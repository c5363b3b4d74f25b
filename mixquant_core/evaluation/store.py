"""The results store: every evaluation kept in one SQLite file, so nothing is measured twice.

One row per evaluation, keyed by what determines its numbers: the model's weight fingerprint, the
quantizer, the per-layer bits (and their hash), the evaluation set's content fingerprint, the image
count, the preprocessing, the engine and the mixquant version. A row holds the metrics, their
intervals, the per-image results (bit-packed hits, float64 losses), when it ran and how long it took.

The file is untrusted input: a file from another schema version is refused (or, for none so far,
migrated), a corrupt one is refused with its name and how to move it aside; it is never deleted
or overwritten. WAL mode and a busy timeout let several processes write at once.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, List, Optional, Sequence, TypeVar

import numpy as np

from ..errors import MixQuantError

if TYPE_CHECKING:  # evaluate imports torch: `mixquant results` reads the store without it
    from .evaluate import Metrics

SCHEMA_VERSION = 1
STORE_FILE = "results.sqlite"
BUSY_TIMEOUT_S = 60.0
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    model_name TEXT NOT NULL,
    model_fingerprint TEXT NOT NULL,
    quantizer TEXT NOT NULL,
    bits TEXT NOT NULL,            -- JSON {layer: bits}, or "float32"
    bits_hash TEXT NOT NULL,
    eval_fingerprint TEXT NOT NULL,
    images INTEGER NOT NULL,        -- images in the evaluation set
    preprocessing TEXT NOT NULL,
    engine TEXT NOT NULL,
    version TEXT NOT NULL,
    evaluated INTEGER NOT NULL,     -- images actually evaluated (fewer when stopped early)
    stopped_early INTEGER NOT NULL,
    top1 REAL NOT NULL, top5 REAL NOT NULL, loss REAL NOT NULL,
    top1_lo REAL, top1_hi REAL, top5_lo REAL, top5_hi REAL,
    hit1 BLOB NOT NULL, hit5 BLOB NOT NULL, losses BLOB NOT NULL,
    created REAL NOT NULL,
    seconds REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS evaluations_model ON evaluations (model_fingerprint, eval_fingerprint);
"""
LIST_COLUMNS = ("id", "model_name", "quantizer", "bits_hash", "eval_fingerprint", "images", "evaluated",
                "stopped_early", "top1", "top1_lo", "top1_hi", "top5", "engine", "version", "created", "seconds")


def mixquant_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mixquant-studio")
    except PackageNotFoundError:
        return "unknown"


def default_store_path() -> Path:
    """$MIXQUANT_HOME/results.sqlite (default ~/.cache/mixquant/results.sqlite)."""
    home = os.environ.get("MIXQUANT_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "mixquant")
    return Path(home) / STORE_FILE


@dataclass(frozen=True)
class EvalKey:
    """Everything that determines an evaluation's numbers."""

    model_name: str
    model_fingerprint: str
    quantizer: str
    bits: Optional[dict]  # layer -> bits; None = float32
    eval_fingerprint: str
    images: int
    preprocessing: str
    engine: str
    version: str

    @property
    def bits_text(self) -> str:
        return "float32" if self.bits is None else json.dumps(self.bits, sort_keys=False, separators=(",", ":"))

    @property
    def bits_hash(self) -> str:
        return hashlib.sha256(self.bits_text.encode()).hexdigest()[:16]

    @property
    def digest(self) -> str:
        parts = (self.model_fingerprint, "float32" if self.bits is None else self.quantizer, self.bits_hash,
                 self.eval_fingerprint, str(self.images), self.preprocessing, self.engine, self.version)
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class ResultsStore:
    """Open (creating if absent) the store at ``path``; every call uses its own short connection."""

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path).expanduser()
        if self.path.exists() and not self.path.is_file():
            raise MixQuantError(f"results store {self.path} is not a file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MixQuantError(f"cannot create the folder of the results store {self.path}: {exc.strerror or exc}; "
                                "use --store PATH or --no-store") from None
        self._run(self._check_schema)

    # --- opening, schema, corruption ---------------------------------------------------------
    def _refuse_corrupt(self, exc: Exception) -> MixQuantError:
        return MixQuantError(f"results store {self.path} is unreadable ({exc}); it was left as it is: move it aside "
                             f"(mv '{self.path}' '{self.path}.bad') and run again, or use --store PATH / --no-store")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._refuse_corrupt(exc) from None
        try:
            con.execute("PRAGMA busy_timeout = %d" % int(BUSY_TIMEOUT_S * 1000))
            yield con
        except sqlite3.DatabaseError as exc:
            if _is_busy(exc):
                raise  # _run retries it
            raise self._refuse_corrupt(exc) from None
        finally:
            con.close()

    def _run(self, action: Callable[[sqlite3.Connection], T]) -> T:
        """``action`` on a fresh connection, retried while another process holds the file.

        SQLite's busy handler does not cover every case: changing the journal mode, a WAL file being
        recovered, or a read transaction that would have to become a write transaction return "locked"
        at once. Those are retried here, with a random pause so two writers do not keep colliding.
        """
        started = time.monotonic()
        while True:
            try:
                with self._connect() as con:
                    return action(con)
            except sqlite3.OperationalError as exc:  # only "locked"/"busy" get past _connect
                waited = time.monotonic() - started
                if waited > BUSY_TIMEOUT_S:
                    raise MixQuantError(f"results store {self.path} stayed locked by another process for "
                                        f"{waited:.0f} s ({exc})") from None
                time.sleep(random.uniform(0.005, 0.05))

    def _check_schema(self, con: sqlite3.Connection) -> None:
        con.execute("BEGIN")  # the version and the tables read from one snapshot, never half an initialisation
        try:
            found = con.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.execute("COMMIT")
        if found == SCHEMA_VERSION and "evaluations" in tables:
            con.execute("PRAGMA journal_mode = WAL")
            return
        if found == 0 and not tables:  # a new, empty file: make it ours (checked again under the write lock)
            con.execute("PRAGMA journal_mode = WAL")
            con.execute("BEGIN IMMEDIATE")
            try:
                if con.execute("PRAGMA user_version").fetchone()[0] == 0:
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        con.execute(statement)
                    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                con.execute("COMMIT")
            finally:
                if con.in_transaction:
                    con.execute("ROLLBACK")
            return
        if found > SCHEMA_VERSION:
            raise MixQuantError(f"results store {self.path} has schema version {found}, newer than this mixquant reads "
                                f"({SCHEMA_VERSION}): upgrade mixquant, or use another file with --store PATH")
        raise MixQuantError(f"results store {self.path} is not a mixquant results store of schema {SCHEMA_VERSION} "
                            f"(found version {found}, tables {sorted(tables) or 'none'}): move it aside or use --store PATH")

    # --- rows ---------------------------------------------------------------------------------
    def get(self, key: EvalKey) -> Optional[Metrics]:
        row = self._run(lambda con: con.execute(
            "SELECT evaluated, stopped_early, hit1, hit5, losses FROM evaluations WHERE key = ?", (key.digest,)).fetchone())
        if row is None:
            return None
        return _metrics_from_blobs(*row)

    def put(self, key: EvalKey, metrics: Metrics, seconds: float) -> None:
        ci = metrics.intervals()
        values = (key.digest, key.model_name, key.model_fingerprint, key.quantizer if key.bits is not None else "float32",
                  key.bits_text, key.bits_hash, key.eval_fingerprint, key.images, key.preprocessing, key.engine,
                  key.version, metrics.images, int(metrics.stopped_early), metrics.top1, metrics.top5, metrics.loss,
                  *ci["top1_ci"], *ci["top5_ci"], np.packbits(metrics.hit1).tobytes(),
                  np.packbits(metrics.hit5).tobytes(), np.asarray(metrics.losses, dtype="<f8").tobytes(),
                  time.time(), float(seconds))
        self._run(lambda con: con.execute(f"INSERT OR REPLACE INTO evaluations (key, model_name, model_fingerprint, quantizer, bits, bits_hash, "
                        f"eval_fingerprint, images, preprocessing, engine, version, evaluated, stopped_early, top1, top5, "
                        f"loss, top1_lo, top1_hi, top5_lo, top5_hi, hit1, hit5, losses, created, seconds) "
                        f"VALUES ({', '.join('?' * len(values))})", values))

    def rows(self, model: Optional[str] = None) -> List[dict]:
        """Every row (newest first) without the per-image blobs; ``model`` filters by name."""
        query = f"SELECT {', '.join(LIST_COLUMNS)} FROM evaluations"
        args: tuple = ()
        if model:
            query += " WHERE model_name = ?"
            args = (model,)
        def read(con: sqlite3.Connection) -> List[dict]:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute(query + " ORDER BY created DESC, id DESC", args)]

        return self._run(read)

    def row(self, row_id: int) -> dict:
        """One row in full: key fields, metrics, intervals and the per-layer bits (no blobs)."""
        def read(con: sqlite3.Connection):
            con.row_factory = sqlite3.Row
            return con.execute("SELECT * FROM evaluations WHERE id = ?", (int(row_id),)).fetchone()

        r = self._run(read)
        if r is None:
            raise MixQuantError(f"no row {row_id} in the results store {self.path}")
        out = {k: r[k] for k in r.keys() if k not in ("hit1", "hit5", "losses")}
        out["bits"] = None if out["bits"] == "float32" else json.loads(out["bits"])
        return out

    def to_csv(self, model: Optional[str] = None) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(LIST_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows(model))
        return buf.getvalue()

    def prune(self, older_than_days: Optional[float] = None, model: Optional[str] = None,
              other_versions: bool = False) -> int:
        """Delete the rows matching every given condition; returns how many went."""
        where, args = [], []
        if older_than_days is not None:
            where.append("created < ?")
            args.append(time.time() - 86400.0 * older_than_days)
        if model:
            where.append("model_name = ?")
            args.append(model)
        if other_versions:
            where.append("version != ?")
            args.append(mixquant_version())
        if not where:
            raise MixQuantError("say what to prune: --older-than DAYS, --model NAME and/or --other-versions (or --all)")
        return self._run(lambda con: con.execute("DELETE FROM evaluations WHERE " + " AND ".join(where), args).rowcount)

    def clear(self) -> int:
        return self._run(lambda con: con.execute("DELETE FROM evaluations").rowcount)


def _is_busy(exc: sqlite3.DatabaseError) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


def _metrics_from_blobs(evaluated: int, stopped: int, hit1: bytes, hit5: bytes, losses: bytes) -> Metrics:
    h1 = np.unpackbits(np.frombuffer(hit1, dtype=np.uint8), count=evaluated).astype(bool)
    h5 = np.unpackbits(np.frombuffer(hit5, dtype=np.uint8), count=evaluated).astype(bool)
    ls = np.frombuffer(losses, dtype="<f8").astype(np.float64)
    from .evaluate import Metrics  # here, not at the top: reading the store's rows needs no torch

    return Metrics.from_per_image(h1, h5, ls, stopped_early=bool(stopped))


def open_store(path: Optional[str] = None, enabled: bool = True) -> Optional[ResultsStore]:
    """The store at ``path`` (default: $MIXQUANT_HOME/results.sqlite), or None when disabled."""
    if not enabled:
        return None
    return ResultsStore(path or default_store_path())
