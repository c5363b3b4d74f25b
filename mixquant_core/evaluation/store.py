"""The results store: every evaluation kept in one SQLite file, so nothing is measured twice.

One row per evaluation, keyed by what determines its numbers: the model's weight fingerprint, the
quantizer, the per-layer bits (and their hash), the evaluation set's content fingerprint, the image
count, the preprocessing, the engine and the mixquant version. A row holds the metrics, their
intervals, the per-image results (bit-packed hits, float64 losses), when it ran and how long it took.

The file is untrusted input: a file from another schema version is refused (or, for none so far,
migrated), a corrupt one is refused with its name; it is never deleted or overwritten, and moving
it aside is advised only for the file at the default location (one named with --store is the
user's, perhaps not a store at all). Each way a store can be unusable has its own message: does
not exist and cannot be created, not writable, disk full or file-size limit, not a results store,
damaged. Writability is checked on opening, before any evaluation; every row read back is checked
against what mixquant writes, so a row edited by hand is one line naming the store and the row.
WAL mode and a busy timeout let several processes write at once.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import random
import sqlite3
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar

import numpy as np

from ..errors import MixQuantError

if TYPE_CHECKING:  # evaluate imports torch: `mixquant results` reads the store without it
    from .evaluate import Metrics

SCHEMA_VERSION = 1
STORE_FILE = "results.sqlite"
BUSY_TIMEOUT_S = 60.0
SQLITE_HEADER = b"SQLite format 3\x00"
LATEST_TIMESTAMP = 253402300799.0  # 9999-12-31, the last moment `results list` can print
T = TypeVar("T")

# SQLite result codes (sqlite3.h): the low byte is the primary code, the rest says more.
SQLITE_PERM, SQLITE_READONLY, SQLITE_IOERR, SQLITE_CORRUPT = 3, 8, 10, 11
SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB = 13, 14, 26
SQLITE_READONLY_DIRECTORY = SQLITE_READONLY | (6 << 8)
# I/O errors of a write: what a full disk or a file-size limit gives (WRITE, FSYNC, TRUNCATE, SHMSIZE).
SQLITE_FAILED_WRITES = {SQLITE_IOERR | (n << 8) for n in (3, 4, 6, 19)}
# Python < 3.11 gives no codes: the messages SQLite uses for them.
SQLITE_CODE_OF_MESSAGE = {"readonly database": SQLITE_READONLY, "disk is full": SQLITE_FULL,
                          "disk I/O error": SQLITE_IOERR, "unable to open database": SQLITE_CANTOPEN,
                          "file is not a database": SQLITE_NOTADB, "malformed": SQLITE_CORRUPT}

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


class StoreWriteError(MixQuantError):
    """The results store cannot take a write: not writable, disk full, a file-size limit."""


class DamagedRowError(MixQuantError):
    """A row of the results store is not what mixquant writes (edited by hand, or damaged)."""


class ResultsStore:
    """Open (creating if absent) the store at ``path``; every call uses its own short connection.
    Opening checks that the store can be written, so a read-only store is refused before any
    evaluation rather than after it, when the result would have nowhere to go."""

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path).expanduser()
        self._check_location()
        self._check_is_sqlite()
        self._run(self._check_schema)
        self._run(self._check_writable)

    # --- opening, schema, corruption ---------------------------------------------------------
    def _check_location(self) -> None:
        if self.path.exists() and not self.path.is_file():
            raise MixQuantError(f"results store {self.path} is not a file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MixQuantError(f"cannot create the folder of the results store {self.path}: {exc.strerror or exc}; "
                                "use --store PATH or --no-store") from None

    def _check_is_sqlite(self) -> None:
        """Refuse a file that is not SQLite before SQLite opens it (an empty file becomes a store)."""
        try:
            with open(self.path, "rb") as fh:
                head = fh.read(len(SQLITE_HEADER))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise MixQuantError(f"results store {self.path} cannot be read ({exc.strerror or exc}); "
                                "use --store PATH or --no-store") from None
        if head and head != SQLITE_HEADER:
            raise MixQuantError(f"{self.path} is not a mixquant results store (not an SQLite database); it was left "
                                f"as it is: {self._advice()}")

    def _at_default_location(self) -> bool:
        try:
            return self.path.resolve() == default_store_path().expanduser().resolve()
        except OSError:
            return False

    def _advice(self) -> str:
        """How to go on past an unusable file. Moving it aside is advised only for the file at the
        default location, which only mixquant writes: a file named with --store is the user's."""
        if self._at_default_location():
            return (f"move it aside (mv '{self.path}' '{self.path}.bad') and run again, "
                    "or use --store PATH / --no-store")
        return "use another --store PATH, or --no-store"

    def _explain(self, exc: sqlite3.Error) -> MixQuantError:
        """The one-line error for what SQLite reported, by cause."""
        code = _result_code(exc)
        primary = code & 0xFF
        if code == SQLITE_READONLY_DIRECTORY:
            return StoreWriteError(f"results store {self.path} is not writable: its folder '{self.path.parent}' is "
                                   "read-only (SQLite keeps its journal beside the file); "
                                   "use --store PATH or --no-store")
        if primary in (SQLITE_READONLY, SQLITE_PERM):
            return StoreWriteError(f"results store {self.path} is not writable ({exc}); use --store PATH or --no-store")
        if primary == SQLITE_FULL or code in SQLITE_FAILED_WRITES:
            return StoreWriteError(f"results store {self.path} cannot be written: the disk is full or a file-size "
                                   f"limit was reached ({exc}); free some space, or use --store PATH / --no-store")
        if primary == SQLITE_IOERR:
            return MixQuantError(f"results store {self.path} cannot be read or written ({exc}): the disk is full, a "
                                 "file-size limit was reached or the disk failed; use --store PATH or --no-store")
        if primary == SQLITE_CANTOPEN:
            return self._cannot_open(exc)
        if primary in (SQLITE_CORRUPT, SQLITE_NOTADB):
            return MixQuantError(f"results store {self.path} is damaged ({exc}); it was left as it is: "
                                 f"{self._advice()}")
        return MixQuantError(f"results store {self.path}: {exc}")

    def _cannot_open(self, exc: sqlite3.Error) -> MixQuantError:
        if not self.path.exists():
            folder = self.path.parent
            reason = _why_no_file_can_be_made_in(folder) or str(exc)
            return StoreWriteError(f"results store {self.path} does not exist and cannot be created in '{folder}' "
                                   f"({reason}); use --store PATH or --no-store")
        return MixQuantError(f"results store {self.path} cannot be opened ({exc}); use --store PATH or --no-store")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._explain(exc) from None
        try:
            con.execute("PRAGMA busy_timeout = %d" % int(BUSY_TIMEOUT_S * 1000))
            yield con
        except sqlite3.DatabaseError as exc:
            if _is_busy(exc):
                raise  # _run retries it
            raise self._explain(exc) from None
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
        raise MixQuantError(f"{self.path} is not a mixquant results store of schema {SCHEMA_VERSION} (an SQLite "
                            f"database of version {found}, tables {sorted(tables) or 'none'}); it was left as it is: "
                            f"{self._advice()}")

    def _check_writable(self, con: sqlite3.Connection) -> None:
        """A write that is rolled back: a read-only file or folder shows now, before any evaluation.
        (A disk that fills up later still can: put's callers keep the result and say it was not stored.)"""
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        finally:
            if con.in_transaction:
                con.execute("ROLLBACK")

    # --- rows ---------------------------------------------------------------------------------
    def _damaged(self, row_id: object, problem: str) -> DamagedRowError:
        return DamagedRowError(f"results store {self.path}: row {_shown(row_id)} is damaged ({problem})")

    def _checked(self, row: Mapping) -> dict:
        """``row`` as a dict once every column holds what mixquant writes; DamagedRowError if not."""
        problem = _row_problem(row)
        if problem:
            raise self._damaged(row["id"], problem)
        return dict(row)

    def _read(self, query: str, args: tuple) -> List[sqlite3.Row]:
        def read(con: sqlite3.Connection) -> List[sqlite3.Row]:
            con.row_factory = sqlite3.Row
            return con.execute(query, args).fetchall()

        return self._run(read)

    def get(self, key: EvalKey) -> Optional[Metrics]:
        """The stored metrics of ``key``, or None; a damaged row raises DamagedRowError."""
        found = self._read("SELECT id, images, evaluated, stopped_early, hit1, hit5, losses FROM evaluations "
                           "WHERE key = ?", (key.digest,))
        if not found:
            return None
        row = self._checked(found[0])
        return _metrics_from_blobs(row["evaluated"], row["stopped_early"], row["hit1"], row["hit5"], row["losses"])

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

    def rows(self, model: Optional[str] = None, on_damaged: Optional[Callable[[str], None]] = None) -> List[dict]:
        """Every row (newest first) without the per-image blobs; ``model`` filters by name. A damaged
        row raises DamagedRowError, or, given ``on_damaged``, is skipped and told to it in one line."""
        query = f"SELECT {', '.join(LIST_COLUMNS)} FROM evaluations"
        args: tuple = ()
        if model:
            query += " WHERE model_name = ?"
            args = (model,)
        intact = []
        for r in self._read(query + " ORDER BY created DESC, id DESC", args):
            try:
                intact.append(self._checked(r))
            except DamagedRowError as exc:
                if on_damaged is None:
                    raise
                on_damaged(f"{exc}; skipped")
        return intact

    def row(self, row_id: int) -> dict:
        """One row in full: key fields, metrics, intervals and the per-layer bits (no blobs)."""
        if not _is_sqlite_integer(row_id):  # SQLite's integers are 64-bit: a larger id names no row
            raise MixQuantError(f"results store {self.path} has no row {_shown(row_id)}")
        found = self._read("SELECT * FROM evaluations WHERE id = ?", (int(row_id),))
        if not found:
            raise MixQuantError(f"results store {self.path} has no row {_shown(row_id)}")
        try:
            out = {k: v for k, v in self._checked(found[0]).items() if k not in ("hit1", "hit5", "losses")}
        except DamagedRowError as exc:
            raise DamagedRowError(f"{exc}; it was left as it is") from None
        out["bits"] = _bits_of(out["bits"])
        return out

    def to_csv(self, model: Optional[str] = None) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(LIST_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows(model))
        return buf.getvalue()

    def prune(self, older_than_days: Optional[float] = None, model: Optional[str] = None,
              other_versions: bool = False) -> int:
        """Delete the rows matching every given condition; returns how many went. A bad age is
        refused before anything is deleted (a negative one would match every row)."""
        where, args = [], []
        if older_than_days is not None:
            where.append("created < ?")
            args.append(time.time() - 86400.0 * _checked_age(older_than_days))
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


def _result_code(exc: sqlite3.Error) -> int:
    """SQLite's (extended) result code of ``exc``; from its message where Python gives none (< 3.11)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code
    text = str(exc)
    return next((c for words, c in SQLITE_CODE_OF_MESSAGE.items() if words in text), 0)


def _why_no_file_can_be_made_in(folder: Path) -> Optional[str]:
    """Why a file cannot be created in ``folder`` (found by trying), or None when one can."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".results.", suffix=".probe"):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _checked_age(days: object) -> float:
    """A row age in days for prune: a finite number >= 0. A negative age would match every row and
    NaN or infinity none, so a bad value is refused rather than deleting by accident."""
    try:
        value = float(days)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise MixQuantError(f"--older-than must be a number of days >= 0, got {_shown(days)}; nothing was deleted")
    return value


def _is_sqlite_integer(value: object) -> bool:
    return isinstance(value, int) and -(2**63) <= value < 2**63


def _shown(value: object, limit: int = 40) -> str:
    text = repr(value) if not isinstance(value, int) else str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# --- checking rows read back --------------------------------------------------------------
def _is_text(value: object) -> bool:
    return isinstance(value, str)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and value >= 0


def _is_flag(value: object) -> bool:
    return isinstance(value, int) and value in (0, 1)


def _is_finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _is_percent(value: object) -> bool:
    return _is_finite(value) and 0.0 <= value <= 100.0  # type: ignore[operator]


def _is_loss(value: object) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)  # a diverged model's loss may be infinite


def _is_time(value: object) -> bool:
    return _is_finite(value) and 0.0 <= value <= LATEST_TIMESTAMP  # type: ignore[operator]


def _is_blob(value: object) -> bool:
    return isinstance(value, bytes)


# What every column must hold for the code that reads it (formatting, unpacking) to work.
COLUMN_CHECKS = {
    "key": _is_text, "model_name": _is_text, "model_fingerprint": _is_text, "quantizer": _is_text,
    "bits": _is_text, "bits_hash": _is_text, "eval_fingerprint": _is_text, "preprocessing": _is_text,
    "engine": _is_text, "version": _is_text, "images": _is_count, "evaluated": _is_count,
    "stopped_early": _is_flag, "top1": _is_percent, "top5": _is_percent, "loss": _is_loss,
    "top1_lo": _is_finite, "top1_hi": _is_finite, "top5_lo": _is_finite, "top5_hi": _is_finite,
    "hit1": _is_blob, "hit5": _is_blob, "losses": _is_blob, "created": _is_time, "seconds": _is_time,
}


def _row_problem(row: Mapping) -> Optional[str]:
    """What is wrong with a row read back, in words, or None when it is as mixquant writes it."""
    names = row.keys()
    for name in names:
        check = COLUMN_CHECKS.get(name)
        if check is not None and not check(row[name]):
            return f"column {name} holds {_shown(row[name])}"
    if "evaluated" in names and "images" in names and row["evaluated"] > row["images"]:
        return f"{row['evaluated']} images evaluated of {row['images']}"
    if "bits" in names:
        try:
            _bits_of(row["bits"])
        except ValueError as exc:
            return f"column bits holds {_shown(row['bits'])}: {exc}"
    if "losses" in names:
        return _blob_problem(row)
    return None


def _blob_problem(row: Mapping) -> Optional[str]:
    """The per-image blobs must hold exactly ``evaluated`` images (unpacking trusts their sizes)."""
    n = row["evaluated"]
    if n < 1:
        return "no images evaluated"
    for name, size in (("hit1", -(-n // 8)), ("hit5", -(-n // 8)), ("losses", 8 * n)):
        if len(row[name]) != size:
            return f"column {name} holds {len(row[name])} bytes, {size} for {n} images"
    return None


def _bits_of(text: str) -> Optional[dict]:
    """The per-layer bits of a row, None for float32; ValueError when the text is not such a mapping."""
    if text == "float32":
        return None
    try:
        bits = json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None  # json's own errors are ValueErrors already
    if not (isinstance(bits, dict) and all(isinstance(b, int) and not isinstance(b, bool) for b in bits.values())):
        raise ValueError("not a JSON object of layer bit-widths")
    return bits


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


def recall(store: ResultsStore, key: EvalKey, notify: Callable[[str], None]) -> Optional["Metrics"]:
    """``key``'s stored metrics, or None. A damaged row counts as none: it is measured again and
    its new row replaces the damaged one (same key)."""
    try:
        return store.get(key)
    except DamagedRowError as exc:
        notify(f"{exc}; measuring it again to replace it")
        return None


def keep(store: ResultsStore, key: EvalKey, metrics: "Metrics", seconds: float, notify: Callable[[str], None]) -> None:
    """Keep a measured result. A store that cannot take it (disk full, made read-only meanwhile)
    must not cost the measurement: the caller still has it, and one notice says it was not stored."""
    try:
        store.put(key, metrics, seconds)
    except MixQuantError as exc:
        notify(f"{exc}; results measured now are shown but not stored")


def remembered(store: Optional[ResultsStore], key: EvalKey, measure: Callable[[], "Metrics"],
               notify: Callable[[str], None]) -> Tuple["Metrics", bool]:
    """(metrics, read from the store?): ``key``'s stored metrics, else ``measure()`` kept in ``store``
    (for evaluations outside an Evaluator: an export file's)."""
    got = recall(store, key, notify) if store is not None else None
    if got is not None:
        return got, True
    start = time.perf_counter()
    metrics = measure()
    if store is not None:
        keep(store, key, metrics, time.perf_counter() - start, notify)
    return metrics, False
