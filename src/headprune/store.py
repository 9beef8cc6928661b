"""The results store: every per-seed score, written the moment it exists (SQLite in the run directory).

A score is keyed by everything that determines it: the model's fingerprint, the pruned set, the
dataset's content hash, the seed and the scoring settings. Asking again returns the stored value.
SQLite in WAL mode with one short transaction per score: a process killed at any moment loses at
most the evaluation in flight, and several processes may write to one store at once."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from .errors import HeadpruneError
from .heads import HeadSet
from .tasks import SeedScore

SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    pruned TEXT NOT NULL,
    dataset TEXT NOT NULL,
    dataset_hash TEXT NOT NULL,
    seed INTEGER NOT NULL,
    settings TEXT NOT NULL,
    f1 REAL NOT NULL,
    adjust_seconds REAL NOT NULL,
    n_params INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    device TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS importance (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    dataset TEXT NOT NULL,
    dataset_hash TEXT NOT NULL,
    seed INTEGER NOT NULL,
    settings TEXT NOT NULL,
    matrices TEXT NOT NULL,
    device TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS timings (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    pruned TEXT NOT NULL,
    dataset TEXT NOT NULL,
    dataset_hash TEXT NOT NULL,
    seed INTEGER NOT NULL,
    settings TEXT NOT NULL,
    device TEXT NOT NULL,
    seconds REAL NOT NULL,
    created REAL NOT NULL
);
"""


def make_key(**parts) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def _schema_columns() -> dict[str, list[str]]:
    """{table: columns} of SCHEMA, read from SQLite itself so that the check cannot drift from it."""
    with closing(sqlite3.connect(":memory:")) as memory:
        memory.executescript(SCHEMA)
        tables = [row[0] for row in memory.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: [c[1] for c in memory.execute(f"PRAGMA table_info({t})")] for t in tables}


def _check_existing(path: Path) -> None:
    """Refuse, before anything is written, a file that is not a store: the user's data stays as it was."""
    if path.is_dir():
        raise HeadpruneError(f"{path}: is a directory, not a results store")
    if path.is_file() and path.stat().st_size > 0:
        with path.open("rb") as handle:
            if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                raise HeadpruneError(
                    f"{path}: not a SQLite file, so not a headprune results store; left as it is "
                    "(move it away or choose another --run-dir)"
                )


def _check_shape(connection: sqlite3.Connection, path: Path) -> None:
    expected = _schema_columns()
    tables = [row[0] for row in connection.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    foreign = [t for t in tables if t not in expected]
    wrong = [t for t in tables if t in expected
             and [c[1] for c in connection.execute(f"PRAGMA table_info({t})")] != expected[t]]
    if foreign or wrong:
        what = f"its tables: {', '.join(foreign)}" if foreign else f"a '{wrong[0]}' table of other columns"
        raise HeadpruneError(
            f"{path}: a SQLite file but not a headprune results store ({what}); left as it is "
            "(move it away or choose another --run-dir)"
        )


class ResultStore:
    """SQLite-backed store of per-seed scores and Step 1 importance matrices.

    Opening a file that is not a store (another file, another SQLite database, a damaged one) is one
    `HeadpruneError` line, raised before anything is written to it; so is a store found damaged later."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        _check_existing(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=120, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as err:
            raise HeadpruneError(f"{self.path}: cannot open the results store ({err})") from None
        try:
            _check_shape(self._conn, self.path)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(SCHEMA)
        except HeadpruneError:
            self._conn.close()
            raise
        except sqlite3.Error as err:
            self._conn.close()
            raise self._damaged(err) from None

    def _damaged(self, err: sqlite3.Error) -> HeadpruneError:
        return HeadpruneError(f"{self.path}: the results store cannot be read ({err}); it is left as it is")

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; SQLite's errors (a damaged or locked file) become one line."""
        with self._lock:
            try:
                yield self._conn
            except sqlite3.DatabaseError as err:
                raise self._damaged(err) from None

    # ------------------------------------------------------------------ scores
    @staticmethod
    def score_key(model: str, pruned, dataset_hash: str, seed: int, settings: dict) -> str:
        return make_key(model=model, pruned=HeadSet(pruned).key(), dataset=dataset_hash, seed=int(seed),
                        settings=settings)

    def get_score(self, key: str) -> SeedScore | None:
        with self._locked() as conn:
            row = conn.execute(
                "SELECT f1, adjust_seconds, n_params, size_bytes, device FROM scores WHERE key = ?", (key,)
            ).fetchone()
        return SeedScore(*row) if row else None

    def put_score(
        self,
        key: str,
        *,
        model: str,
        pruned,
        dataset: str,
        dataset_hash: str,
        seed: int,
        settings: dict,
        score: SeedScore,
    ) -> None:
        values = (
            key,
            model,
            HeadSet(pruned).key(),
            dataset,
            dataset_hash,
            int(seed),
            json.dumps(settings, sort_keys=True),
            float(score.f1),
            float(score.adjust_seconds),
            int(score.n_params),
            int(score.size_bytes),
            score.device,
            time.time(),
        )
        with self._locked() as conn:
            conn.execute("INSERT OR IGNORE INTO scores VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", values)

    def count_scores(self) -> int:
        with self._locked() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0])

    def all_scores(self) -> list[dict]:
        with self._locked() as conn:
            cursor = conn.execute("SELECT * FROM scores ORDER BY created")
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    # ------------------------------------------------------------------ importance (Step 1)
    @staticmethod
    def importance_key(model: str, dataset_hash: str, seed: int, settings: dict) -> str:
        return make_key(kind="importance", model=model, dataset=dataset_hash, seed=int(seed), settings=settings)

    def get_importance(self, key: str) -> list | dict | None:
        """A Step 1 row's content, decoded: an OI row holds the per-epoch matrices (a list), a
        statistics row the raw gate sums (`importance.GateStatistics.to_json`, an object)."""
        with self._locked() as conn:
            row = conn.execute("SELECT matrices FROM importance WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put_importance(
        self,
        key: str,
        *,
        model: str,
        dataset: str,
        dataset_hash: str,
        seed: int,
        settings: dict,
        matrices: list,
        device: str,
    ) -> None:
        values = (
            key,
            model,
            dataset,
            dataset_hash,
            int(seed),
            json.dumps(settings, sort_keys=True),
            json.dumps(matrices),
            device,
            time.time(),
        )
        with self._locked() as conn:
            conn.execute("INSERT OR IGNORE INTO importance VALUES (?,?,?,?,?,?,?,?,?)", values)

    # ------------------------------------------------------------------ adjusting times (Table 14)
    @staticmethod
    def timing_key(model: str, pruned, dataset_hash: str, seed: int, settings: dict, device: str) -> str:
        """A time is a fact of the device it was measured on: `device` names it (e.g. "cuda: NVIDIA H200")."""
        return make_key(kind="timing", model=model, pruned=HeadSet(pruned).key(), dataset=dataset_hash, seed=int(seed),
                        settings=settings, device=device)

    def get_timing(self, key: str) -> float | None:
        with self._locked() as conn:
            row = conn.execute("SELECT seconds FROM timings WHERE key = ?", (key,)).fetchone()
        return float(row[0]) if row else None

    def put_timing(self, key: str, *, model: str, pruned, dataset: str, dataset_hash: str, seed: int,
                   settings: dict, device: str, seconds: float) -> None:
        values = (key, model, HeadSet(pruned).key(), dataset, dataset_hash, int(seed),
                  json.dumps(settings, sort_keys=True), device, float(seconds), time.time())
        with self._locked() as conn:
            conn.execute("INSERT OR IGNORE INTO timings VALUES (?,?,?,?,?,?,?,?,?,?)", values)

    def importance_rows(self, model: str) -> list[dict]:
        """Every stored Step 1 result of a model: {"dataset", "dataset_hash", "seed", "settings",
        "matrices"} (decoded). "dataset" is the name the row was first stored under; the row is keyed
        by "dataset_hash", so a reader selecting rows must go by the hash (a renamed file keeps its
        rows, an edited file of the same name gets new ones)."""
        with self._locked() as conn:
            rows = conn.execute(
                "SELECT dataset, dataset_hash, seed, settings, matrices FROM importance WHERE model = ? "
                "ORDER BY created", (model,)
            ).fetchall()
        return [{"dataset": d, "dataset_hash": h, "seed": int(s), "settings": json.loads(st), "matrices": json.loads(m)}
                for d, h, s, st, m in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


__all__ = ["ResultStore", "make_key"]
