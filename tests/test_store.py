"""The results store: keys, first write wins, concurrent writers, the Step 1 importance table."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from headprune.errors import HeadpruneError
from headprune.heads import HeadSet
from headprune.store import ResultStore, make_key
from headprune.tasks import SeedScore

SETTINGS = {"epochs": 4, "n_folds": 10, "learning_rate": 2e-5}
BASE = {"model": "abc123", "pruned": [(0, 1), (2, 3)], "dataset_hash": "d" * 16, "seed": 1, "settings": SETTINGS}


def key_of(**changes) -> str:
    parts = {**BASE, **changes}
    return ResultStore.score_key(parts["model"], parts["pruned"], parts["dataset_hash"], parts["seed"],
                                 parts["settings"])


def put(store: ResultStore, key: str, f1: float, seed: int = 1, **extra) -> None:
    store.put_score(key, model="abc123", pruned=[(0, 1)], dataset="person", dataset_hash="d" * 16, seed=seed,
                    settings=SETTINGS, score=SeedScore(f1=f1, adjust_seconds=1.5, n_params=100, size_bytes=400,
                                                       **extra))


@pytest.fixture
def store(tmp_path: Path):
    s = ResultStore(tmp_path / "runs" / "store.sqlite")
    yield s
    s.close()


def test_put_get_round_trip(store: ResultStore, tmp_path: Path) -> None:
    key = key_of()
    assert store.get_score(key) is None
    score = SeedScore(f1=0.123456789012345, adjust_seconds=2.5, n_params=1234, size_bytes=5678, device="cuda")
    store.put_score(key, model="abc123", pruned=[(2, 3), (0, 1)], dataset="person", dataset_hash="d" * 16, seed=1,
                    settings=SETTINGS, score=score)
    assert store.get_score(key) == score  # exact: the F1 is stored as a double
    assert store.count_scores() == 1
    (row,) = store.all_scores()
    assert row["pruned"] == "[[0,1],[2,3]]" and row["seed"] == 1 and row["dataset"] == "person"
    # Another connection (a later process) sees it.
    other = ResultStore(tmp_path / "runs" / "store.sqlite")
    assert other.get_score(key) == score
    other.close()


def test_key_changes_with_each_part() -> None:
    key = key_of()
    assert key == key_of()  # stable
    variants = {
        "model": key_of(model="abc124"),
        "pruned": key_of(pruned=[(0, 1)]),
        "pruned (none)": key_of(pruned=[]),
        "dataset": key_of(dataset_hash="e" * 16),
        "seed": key_of(seed=2),
        "settings": key_of(settings={**SETTINGS, "epochs": 1}),
        "settings (extra entry)": key_of(settings={**SETTINGS, "max_length": 128}),
    }
    for what, other in variants.items():
        assert other != key, what
    assert len(set(variants.values())) == len(variants)


def test_key_ignores_pruned_order_and_types() -> None:
    key = key_of()
    assert key_of(pruned=[(2, 3), (0, 1)]) == key
    assert key_of(pruned=[[2, 3], [0, 1]]) == key
    assert key_of(pruned=((0, 1), (2, 3))) == key
    assert key_of(pruned=frozenset({(2, 3), (0, 1)})) == key
    assert HeadSet([(1, 0), (0, 3)]).key() == "[[0,3],[1,0]]"
    # Settings dict order does not matter either.
    assert key_of(settings=dict(reversed(list(SETTINGS.items())))) == key
    assert make_key(a=1, b=2) == make_key(b=2, a=1)


def test_insert_or_ignore_keeps_the_first(store: ResultStore) -> None:
    key = key_of()
    put(store, key, 0.5)
    (first,) = store.all_scores()
    put(store, key, 0.9)
    assert store.get_score(key).f1 == 0.5
    assert store.count_scores() == 1
    assert store.all_scores() == [first]  # same row, same created timestamp


def _writer(path: str, worker: int, n: int, barrier) -> None:
    store = ResultStore(path)
    barrier.wait(timeout=60)  # every process has its connection open: they all write at once
    for i in range(n):
        put(store, key_of(seed=worker * 1000 + i), f1=worker + i / 1000, seed=worker * 1000 + i)
    store.close()


def test_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    ResultStore(path).close()  # create the schema first, as a run does
    # fork: the children only use sqlite3 (spawn would pay headprune's ~7 s of imports four times over).
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(4)
    processes = [context.Process(target=_writer, args=(str(path), w, 50, barrier)) for w in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    store = ResultStore(path)
    assert store.count_scores() == 200
    assert store.get_score(key_of(seed=3049)).f1 == 3 + 49 / 1000
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(DISTINCT seed) FROM scores").fetchone()[0] == 200


def test_importance_round_trip(store: ResultStore) -> None:
    settings = {"epochs": 4, "batch_size": 16}
    key = store.importance_key("abc123", "d" * 16, 1, settings)
    assert key != store.importance_key("abc123", "d" * 16, 2, settings)
    assert key != store.importance_key("abc123", "e" * 16, 1, settings)
    assert key != store.importance_key("abc124", "d" * 16, 1, settings)
    assert key != store.importance_key("abc123", "d" * 16, 1, {**settings, "epochs": 1})
    # An importance key never collides with a score key made of the same parts.
    assert key != ResultStore.score_key("abc123", [], "d" * 16, 1, settings)
    assert store.get_importance(key) is None
    matrices = [[[0.0, 0.25], [1.0, 0.123456789]], [[1.0, 0.0], [0.5, 0.5]]]
    store.put_importance(key, model="abc123", dataset="irony", dataset_hash="d" * 16, seed=1, settings=settings,
                         matrices=matrices, device="cpu")
    assert store.get_importance(key) == matrices
    store.put_importance(key, model="abc123", dataset="irony", dataset_hash="d" * 16, seed=1, settings=settings,
                         matrices=[[[9.0]]], device="cpu")
    assert store.get_importance(key) == matrices  # first write wins
    assert store.count_scores() == 0


# ----------------------------------------------------------------------------- files that are not a store


def _foreign_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE people (name TEXT)")
        conn.execute("INSERT INTO people VALUES ('ada')")
    conn.close()


def _other_scores(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE scores (key TEXT, value REAL)")
    conn.close()


def _damaged(path: Path) -> None:
    store = ResultStore(path)
    for seed in range(200):
        put(store, key_of(seed=seed), 0.5, seed=seed)
    store.close()
    data = path.read_bytes()
    path.write_bytes(data[:100] + b"\x17" * (len(data) - 100))  # the header survives, the pages do not


LEFT = "left as it is (move it away or choose another --run-dir)"


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.write_text("id,score\n1,0.5\n"), f"not a SQLite file, so not a headprune results store; {LEFT}"),
        (_foreign_sqlite, f"a SQLite file but not a headprune results store (its tables: people); {LEFT}"),
        (_other_scores, f"a SQLite file but not a headprune results store (a 'scores' table of other columns); {LEFT}"),
        (_damaged, "the results store cannot be read (database disk image is malformed); it is left as it is"),
        (lambda p: p.mkdir(), "is a directory, not a results store"),
    ],
    ids=["not-sqlite", "foreign-sqlite", "other-columns", "damaged", "directory"],
)
def test_a_file_that_is_not_a_store_is_refused_and_left_alone(tmp_path: Path, make, expected: str) -> None:
    path = tmp_path / "store.sqlite"
    make(path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(HeadpruneError) as err:
        ResultStore(path)
    assert str(err.value) == f"{path}: {expected}"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_an_empty_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    path.write_bytes(b"")
    store = ResultStore(path)
    put(store, key_of(), 0.5)
    assert store.count_scores() == 1
    store.close()


def test_adjusting_times_are_stored_by_device_and_a_store_reopens(tmp_path) -> None:
    """Table 14's times (the `timings` table) are keyed by the device they were measured on, and a
    store holding them is still recognised as a store when opened again."""
    store = ResultStore(tmp_path / "store.sqlite")
    here = store.timing_key("m", [(0, 1)], "h", 1, {"epochs": 1}, "cpu: x86_64, 2 threads")
    there = store.timing_key("m", [(0, 1)], "h", 1, {"epochs": 1}, "cuda: NVIDIA H200")
    assert here != there and store.get_timing(here) is None
    store.put_timing(here, model="m", pruned=[(0, 1)], dataset="d", dataset_hash="h", seed=1,
                     settings={"epochs": 1}, device="cpu: x86_64, 2 threads", seconds=1.5)
    store.close()
    again = ResultStore(tmp_path / "store.sqlite")
    assert again.get_timing(here) == 1.5 and again.get_timing(there) is None
    again.close()
