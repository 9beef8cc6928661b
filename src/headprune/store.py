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
from collections.abc import Iterable
from pathlib import Path

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
"""


def pruned_key(pruned: Iterable[tuple[int, int]]) -> str:
    return json.dumps(sorted([int(l), int(h)] for l, h in pruned), separators=(",", ":"))


def make_key(**parts) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class ResultStore:
    """SQLite-backed store of per-seed scores and Step 1 importance matrices."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), timeout=120, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(SCHEMA)

    # ------------------------------------------------------------------ scores
    @staticmethod
    def score_key(model: str, pruned, dataset_hash: str, seed: int, settings: dict) -> str:
        return make_key(model=model, pruned=pruned_key(pruned), dataset=dataset_hash, seed=int(seed), settings=settings)

    def get_score(self, key: str) -> SeedScore | None:
        with self._lock:
            row = self._conn.execute(
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
            pruned_key(pruned),
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
        with self._lock:
            self._conn.execute("INSERT OR IGNORE INTO scores VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", values)

    def count_scores(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0])

    def all_scores(self) -> list[dict]:
        with self._lock:
            cursor = self._conn.execute("SELECT * FROM scores ORDER BY created")
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    # ------------------------------------------------------------------ importance (Step 1)
    @staticmethod
    def importance_key(model: str, dataset_hash: str, seed: int, settings: dict) -> str:
        return make_key(kind="importance", model=model, dataset=dataset_hash, seed=int(seed), settings=settings)

    def get_importance(self, key: str) -> list | None:
        with self._lock:
            row = self._conn.execute("SELECT matrices FROM importance WHERE key = ?", (key,)).fetchone()
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
        with self._lock:
            self._conn.execute("INSERT OR IGNORE INTO importance VALUES (?,?,?,?,?,?,?,?,?)", values)

    def importance_rows(self, model: str) -> list[dict]:
        """Every stored Step 1 result of a model: {"dataset", "dataset_hash", "seed", "settings",
        "matrices"} (decoded). "dataset" is the name the row was first stored under; the row is keyed
        by "dataset_hash", so a reader selecting rows must go by the hash (a renamed file keeps its
        rows, an edited file of the same name gets new ones)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT dataset, dataset_hash, seed, settings, matrices FROM importance WHERE model = ? "
                "ORDER BY created", (model,)
            ).fetchall()
        return [{"dataset": d, "dataset_hash": h, "seed": int(s), "settings": json.loads(st), "matrices": json.loads(m)}
                for d, h, s, st, m in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


__all__ = ["ResultStore", "make_key", "pruned_key"]
