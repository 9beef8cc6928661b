"""`verify`: every number of a run's summary.json recomputed from its results store."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict
from pathlib import Path

import pytest

from headprune.errors import HeadpruneError
from headprune.settings import ScoreSettings
from headprune.store import ResultStore
from headprune.tasks import SeedScore
from headprune.verify import TOLERANCE, NotInStore, StoredScores, Verification

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCORING = asdict(ScoreSettings())


def test_a_check_counts_and_names_what_differs() -> None:
    result = Verification()
    result.close("same", 0.5, 0.5 + TOLERANCE / 2)
    result.close("nested", {"a": [1, 2.0]}, {"a": [1, 2]})
    result.close("differs", 0.5, 0.5 + 10 * TOLERANCE)
    result.close("missing", 0.5, None)
    assert result.checked == 4
    assert result.problems == [f"differs: summary says 0.5, the store gives {0.5 + 10 * TOLERANCE!r}",
                               "missing: not in the store"]


def _put(store: ResultStore, pruned, dataset: str, seed: int, f1: float, settings: dict = SCORING,
         model: str = "fp") -> None:
    key = ResultStore.score_key(model, pruned, dataset, seed, settings)
    store.put_score(key, model=model, pruned=pruned, dataset=dataset, dataset_hash=dataset, seed=seed,
                    settings=settings, score=SeedScore(f1, 1.0, 10, 100))


def test_stored_scores_find_a_pruned_set_however_it_is_spelled(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "store.sqlite")
    _put(store, [(1, 0), (0, 2)], "a", 1, 0.6)
    _put(store, [(0, 2), (1, 0)], "a", 2, 0.8)
    _put(store, [], "a", 1, 0.7)
    _put(store, [], "a", 2, 0.9, model="another model")  # not this run's model
    _put(store, [], "a", 3, 0.9, settings={**SCORING, "epochs": SCORING["epochs"] + 1})  # other settings
    scores = StoredScores(store, "fp", SCORING)
    store.close()
    assert scores.seed_scores({0: [2], 1: [0]}, "a", [1, 2]) == [0.6, 0.8]
    assert scores.mean(frozenset({(1, 0), (0, 2)}), "a", [1, 2]) == pytest.approx(0.7)
    assert scores.seed_score([], "a", 1) == 0.7
    assert scores.seed_score([], "a", 2) is None and scores.seed_score([], "a", 3) is None
    assert scores.evaluate_seeds([([[0, 2], [1, 0]], "a", 2)]) == [0.8]
    with pytest.raises(NotInStore, match=r"no score for a, seed 2, pruned \[\]"):
        scores.evaluate_seeds([([], "a", 2)])


def test_two_different_stored_scores_of_one_task_cannot_be_verified(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "store.sqlite")
    _put(store, [(0, 1)], "a", 1, 0.6)
    _put(store, [(0, 1)], "a", 1, 0.7, settings={**SCORING, "engine": "batched"})  # another engine's key
    scores = StoredScores(store, "fp", SCORING)
    store.close()
    with pytest.raises(HeadpruneError, match=r"2 different scores for a, seed 1, pruned \[\[0,1\]\]"):
        scores.seed_scores([(0, 1)], "a", [1])


def test_verify_recomputes_the_summary_from_the_store(tiny_run, tmp_path: Path, monkeypatch, capsys) -> None:
    """`headprune verify RUN_DIR`: every H1/H2/H3 score, ranking, chosen model, generalization score,
    mean, std and t-test of summary.json recomputed from the store; a changed number is caught."""
    import shutil

    from _cli import run_cli
    from headprune.verify import verify_run

    root, _, summary = tiny_run
    result = verify_run(root / "run")
    assert result.problems == []
    n_h1 = sum(len(per_k) for entry in summary["h1"].values() for per_k in entry["scores"].values())
    assert result.checked > n_h1 + 5 * 2 * 4  # H1 scores + each generalization cell's scores/mean/std/pct
    code, out, _ = run_cli(monkeypatch, capsys, "verify", root / "run")
    assert code == 0 and out.startswith(f"verified: {result.checked} numbers of ")

    tampered = tmp_path / "run"
    shutil.copytree(root / "run", tampered, ignore=shutil.ignore_patterns("report"))
    changed = json.loads((tampered / "summary.json").read_text())
    changed["generalization"]["MOIH1"]["d"]["scores"][1] += 0.01
    changed["step2_fresh_comparison"]["MOIH2"]["c"]["mean"] += 0.01
    changed["h1"]["OI"]["scores"]["b"]["4"] -= 0.02
    changed["orders"]["OI"]["ranked"][0], changed["orders"]["OI"]["ranked"][1] = (
        changed["orders"]["OI"]["ranked"][1], changed["orders"]["OI"]["ranked"][0])
    (tampered / "summary.json").write_text(json.dumps(changed))
    problems = verify_run(tampered).problems
    assert any(p.startswith("generalization.MOIH1.d.scores:") for p in problems)
    assert any(p.startswith("step2_fresh_comparison.MOIH2.c.mean:") for p in problems)
    assert any(p.startswith("h1.OI.scores.b.4:") for p in problems)
    assert any(p.startswith("Step 1 order (OI):") for p in problems)
    code, _, err = run_cli(monkeypatch, capsys, "verify", tampered)
    assert code == 1 and "numbers of summary.json do not match the store" in err
    code, _, err = run_cli(monkeypatch, capsys, "verify", tmp_path / "nowhere")
    assert code == 2 and err.startswith("error: ") and "summary.json: file not found" in err
    for text, message in (("not json", "summary.json: not a JSON file"),
                          ('{"config": {}}', "summary.json: not a headprune run summary this version can check")):
        (tampered / "summary.json").write_text(text)
        code, _, err = run_cli(monkeypatch, capsys, "verify", tampered)
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err
        assert "Traceback" not in err


def test_verify_recomputes_the_fresh_seed_comparison_on_its_own_seeds(tiny_run, tmp_path: Path) -> None:
    """The fresh-seed G2 comparison is checked on the seeds the summary records, which must be those
    the configuration names and none of them a selection seed."""
    import shutil

    from headprune.verify import verify_run

    root, _, summary = tiny_run
    tampered = tmp_path / "run"
    shutil.copytree(root / "run", tampered, ignore=shutil.ignore_patterns("report"))
    changed = json.loads((tampered / "summary.json").read_text())
    changed["step2_fresh_seeds"] = [2, 202]  # a selection seed among them
    (tampered / "summary.json").write_text(json.dumps(changed))
    problems = verify_run(tampered).problems
    assert "step2_fresh_seeds disjoint from step2.seeds: summary says [2], the store gives []" in problems
    assert any(p.startswith("step2_fresh_seeds: summary says [2, 202]") for p in problems)
    # seed 2's score is not seed 201's
    assert any(p.startswith("step2_fresh_comparison.CM.b.scores:") for p in problems)
    del changed["step2_fresh_comparison"], changed["step2_fresh_seeds"]  # an older summary: Tables 7-10 alone
    (tampered / "summary.json").write_text(json.dumps(changed))
    assert verify_run(tampered).problems == []


def test_verify_recomputes_the_statistics_the_report_shows(tiny_run, tmp_path: Path) -> None:
    """The order comparison ("Which order prunes best": areas, safe k, paired tests with Holm) and the
    overview are recomputed from the stored per-seed scores; a summary written before them (schema
    6) verifies with a note saying they are not there."""
    import shutil

    from headprune.verify import verify_run

    root, _, summary = tiny_run
    assert set(summary["order_comparison"]["orders"]) == {"OI", "A1"} and summary["overview"]["CM"]["datasets"] == 2
    tampered = tmp_path / "run"
    shutil.copytree(root / "run", tampered, ignore=shutil.ignore_patterns("report"))
    changed = json.loads((tampered / "summary.json").read_text())
    changed["order_comparison"]["pairs"][0]["p_value"] = 0.5 if changed["order_comparison"]["pairs"][0]["p_value"] \
        is None else None
    changed["overview"]["MOIH1"]["better_than_cm"] += 1
    (tampered / "summary.json").write_text(json.dumps(changed))
    problems = verify_run(tampered).problems
    assert sorted(p.split(":")[0] for p in problems) == ["order_comparison.pairs[0].p_value",
                                                         "overview.MOIH1.better_than_cm"]
    for key in ("order_comparison", "overview"):
        del changed[key]
    changed["schema_version"] = 6
    (tampered / "summary.json").write_text(json.dumps(changed))
    result = verify_run(tampered)
    assert result.problems == [] and any("holds no order comparison" in note for note in result.notes)


def test_verify_selects_step1_rows_by_content_hash(tiny_run, tmp_path: Path, monkeypatch, capsys) -> None:
    """`verify` picks the Step 1 rows by the content hashes the summary records for the Step 1
    datasets, not by their names: a row stored under the dataset's name for other content is ignored
    beside the real one and, alone, is reported missing (even with the very same numbers); the real
    content's row stored under another name (a renamed file) counts. A summary without the hashes
    (an older run) is checked by name, and the output says so."""
    import shutil

    from _cli import run_cli
    from headprune.data import load_dataset
    from headprune.store import ResultStore
    from headprune.verify import verify_run

    root, csvs, summary = tiny_run
    content = load_dataset(csvs["a"]).content_hash
    assert summary["orders"]["OI"]["dataset_hashes"] == {"a": content}
    assert "dataset_hashes" not in summary["orders"]["A1"]  # a random order has no Step 1 rows
    clean = verify_run(root / "run")
    assert clean.problems == [] and clean.notes == []

    def copy(name: str) -> Path:
        run_dir = tmp_path / name
        shutil.copytree(root / "run", run_dir, ignore=shutil.ignore_patterns("report"))
        return run_dir

    def edit_store(run_dir: Path, sql: str, *args) -> None:
        with sqlite3.connect(run_dir / "store.sqlite") as db:
            assert db.execute(sql, args).rowcount == 1
        db.close()

    with sqlite3.connect(root / "run" / "store.sqlite") as db:  # the OI row (its statistics row is OI-layer's)
        ((settings, matrices),) = db.execute(
            "SELECT settings, matrices FROM importance WHERE settings NOT LIKE '%statistics%'").fetchall()
    db.close()
    other = "f" * 16  # a file named "a" with other content

    # Beside the real row: another content's row of the same name, with other numbers, is not averaged in.
    beside = copy("beside")
    store = ResultStore(beside / "store.sqlite")
    flipped = [[[1.0 - v for v in layer] for layer in epoch] for epoch in json.loads(matrices)]
    store.put_importance("impostor", model=summary["model"]["fingerprint"], dataset="a", dataset_hash=other,
                         seed=1, settings=json.loads(settings), matrices=flipped, device="cpu")
    store.close()
    assert verify_run(beside).problems == []

    # Alone, with the real row's numbers: not the run's content, so the run's row is missing.
    alone = copy("alone")
    edit_store(alone, "UPDATE importance SET dataset_hash = ? WHERE settings NOT LIKE '%statistics%'", other)
    problems = verify_run(alone).problems
    assert problems == [f"Step 1 importance matrices of a (content {content[:12]}), seed 1: not in the store"]
    code, _, err = run_cli(monkeypatch, capsys, "verify", alone)
    assert code == 1 and "mismatch: Step 1 importance matrices of a" in err

    # The run's content stored under another name (the file was renamed since): it is the run's row.
    renamed = copy("renamed")
    edit_store(renamed, "UPDATE importance SET dataset = 'renamed' WHERE settings NOT LIKE '%statistics%'")
    assert verify_run(renamed).problems == []

    # An older summary without the hashes: rows by name (the same-name row is averaged in), with a note.
    for run_dir in (copy("old"), beside):
        data = json.loads((run_dir / "summary.json").read_text())
        del data["orders"]["OI"]["dataset_hashes"]
        (run_dir / "summary.json").write_text(json.dumps(data))
    old = verify_run(tmp_path / "old")
    assert old.problems == [] and len(old.notes) == 1 and "selected by dataset name" in old.notes[0]
    code, out, err = run_cli(monkeypatch, capsys, "verify", tmp_path / "old")
    assert code == 0 and out.startswith("verified: ") and "note: summary.json records no content hashes" in err
    assert any(p.startswith("Step 1 importance matrix (OI):") for p in verify_run(beside).problems)
