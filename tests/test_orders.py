"""Every importance criterion through `headprune run` on the tiny BERT (issue 16): OI, OI-layer and
fisher from one set of Step 1 finetunings, magnitude without data, a random order; each order's
stability and H1's per-seed scores in summary.json, `headprune verify` recomputing them, and the
report's "Which order prunes best"."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from headprune.config import from_dict
from headprune.pipeline import Pipeline
from headprune.plan import plan
from headprune.progress import RunProgress

ORDERS = ["OI", "OI-layer", "fisher", "magnitude", "A1"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(model_dir: Path, csvs: dict[str, Path]) -> dict:
    return {
        "model": {"name": str(model_dir), "mlm_head_warmup_steps": 0},
        "step1": {"datasets": [str(csvs["a"])], "seeds": "1-2", "epochs": 1},
        "scoring": {"epochs": 1, "n_folds": 3},
        "step2": {"datasets": [str(csvs["b"])], "seeds": "1-2", "strategies": ["H1"], "orders": ORDERS,
                  "random_order_strategies": ["H1"], "h1_k_step": 4},
        "generalization": {"datasets": [str(csvs["c"])], "seeds": "101-102"},
        "run": {"device": "cpu", "report": False},
    }


@pytest.fixture(scope="module")
def orders_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, air_data_dir: Path):
    root = tmp_path_factory.mktemp("orders")
    csvs = {}
    for name, source in {"a": "irony", "b": "person", "c": "ntua"}.items():
        frame = pd.read_csv(air_data_dir / f"{source}.csv", dtype=str, keep_default_na=False)
        csvs[name] = root / f"{name}.csv"
        pd.concat([frame[frame["class"] == c].head(12) for c in ("positive", "negative")]).to_csv(csvs[name],
                                                                                              index=False)
    config = from_dict(_config(tiny_bert_dir, csvs), source="orders.toml")
    summary = Pipeline(config, root / "run", progress=RunProgress(enabled=False)).run()
    return root, config, summary


def test_every_criterion_is_an_order_of_the_run(orders_run) -> None:
    root, config, summary = orders_run
    orders = summary["orders"]
    assert list(orders) == ORDERS
    assert [orders[o]["kind"] for o in ORDERS] == ["importance", "importance", "importance", "weights", "random"]
    assert orders["OI"]["settings"] == {k: v for k, v in orders["OI-layer"]["settings"].items() if k != "statistics"}
    assert orders["OI-layer"]["settings"]["statistics"] == orders["fisher"]["settings"]["statistics"] == "raw-abs-sq"
    assert orders["fisher"]["dataset_hashes"] == orders["OI"]["dataset_hashes"]
    assert orders["magnitude"]["matrix"] is not None and "dataset_hashes" not in orders["magnitude"]
    # One finetuning per (dataset, seed) for the three Step 1 orders: its OI row and its statistics row.
    with sqlite3.connect(root / "run" / "store.sqlite") as db:
        rows = db.execute("SELECT seed, settings FROM importance ORDER BY seed").fetchall()
    assert [(seed, '"statistics"' in settings) for seed, settings in rows] in (
        [(1, False), (1, True), (2, False), (2, True)], [(1, True), (1, False), (2, True), (2, False)])
    assert {f"M{o}H1" for o in ORDERS} <= set(summary["chosen"])
    # The dry run plans Step 1 once for the three orders that share it.
    stages = plan(Pipeline(config, root / "plan"))
    assert [s["stage"] for s in stages if "finetunings" in s] == ["Step 1: importance (OI, OI-layer, fisher)"]
    assert [s["finetunings"] for s in stages if "finetunings" in s] == [2]


def test_stability_and_per_seed_h1_scores_are_recorded(orders_run) -> None:
    root, _, summary = orders_run
    for name in ("OI", "OI-layer", "fisher"):
        stability = summary["orders"][name]["stability"]
        assert stability["runs"] == 2 and stability["seeds"]["pairs"] == 1 and stability["datasets"]["pairs"] == 0
        assert set(stability["bootstrap"]["bottom_k"]) == {"4", "8"} and stability["bootstrap"]["resamples"] == 1000
        assert -1.0 <= stability["seeds"]["spearman"] <= 1.0
    assert "nil" in summary["orders"]["A1"]["stability"]["note"]
    assert "deterministic" in summary["orders"]["magnitude"]["stability"]["note"]
    saved = json.loads((root / "run" / "orders" / "OI.json").read_text())
    assert [(r["dataset"], r["seed"]) for r in saved["runs"]] == [("a", 1), ("a", 2)]
    with sqlite3.connect(root / "run" / "store.sqlite") as db:
        stored = {(p, ds, seed): f1 for p, ds, seed, f1 in db.execute("SELECT pruned, dataset, seed, f1 FROM scores")}
    for name in ORDERS:
        h1 = summary["h1"][name]
        assert h1["seeds"] == [1, 2] and set(h1["seed_scores"]["b"]) == {"0", "4", "8"}
        ranked = summary["orders"][name]["ranked"]
        for k, scores in h1["seed_scores"]["b"].items():
            key = json.dumps(sorted(ranked[len(ranked) - int(k):]) if int(k) else [], separators=(",", ":"))
            assert scores == [stored[(key, "b", seed)] for seed in (1, 2)]
            assert sum(scores) / 2 == pytest.approx(h1["scores"]["b"][k])
    assert len({tuple(summary["h1"][o]["seed_scores"]["b"]["0"]) for o in ORDERS}) == 1  # k = 0 is CM everywhere


def test_verify_recomputes_every_order_and_catches_changes(orders_run, tmp_path: Path) -> None:
    from headprune.verify import verify_run

    root, _, _ = orders_run
    clean = verify_run(root / "run")
    assert clean.problems == []
    assert clean.notes == ["order magnitude: its matrix (the norms of the checkpoint's weights) is not recomputed, "
                           "since verify reads no model; its ranking is checked against it"]
    tampered = tmp_path / "run"
    shutil.copytree(root / "run", tampered)
    data = json.loads((tampered / "summary.json").read_text())
    data["orders"]["OI-layer"]["matrix"][0][0] += 0.1
    data["orders"]["fisher"]["stability"]["seeds"]["spearman"] = 0.123
    data["orders"]["OI"]["stability"]["bootstrap"]["bottom_k"]["4"]["agreement"] = 0.5
    data["h1"]["fisher"]["seed_scores"]["b"]["4"][1] += 0.01
    for name in ("magnitude", "A1"):
        ranked = data["orders"][name]["ranked"]
        ranked[0], ranked[-1] = ranked[-1], ranked[0]
    (tampered / "summary.json").write_text(json.dumps(data))
    problems = verify_run(tampered).problems
    for start in ("Step 1 importance matrix (OI-layer):", "orders.fisher.stability.seeds.spearman: summary says 0.123",
                  "orders.OI.stability.bootstrap.bottom_k.4.agreement: summary says 0.5",
                  "h1.fisher.seed_scores.b.4:", "order magnitude (ranked by its matrix):",
                  "order A1 (the random order of seed 1):"):
        assert sum(p.startswith(start) for p in problems) == 1, (start, problems)


def test_the_report_says_which_order_prunes_best(orders_run, tmp_path: Path) -> None:
    from headprune.report import write_report

    root, _, _ = orders_run
    shutil.copytree(root / "run", tmp_path / "run")
    path = write_report(tmp_path / "run")
    md = (path.parent / "tables.md").read_text(encoding="utf-8")
    section = md[md.index("## Which order prunes best"):]
    section = section[:section.index("\n## ", 1)]
    for name in ORDERS:
        assert f"| {name} |" in section or f"| **{name}** |" in section
    assert "prunes best here" in section or "No order prunes significantly better" in section
    assert "## Pairwise: mean F1 over k of two orders" in md
    assert (path.parent / "figures" / "orders_b.png").is_file()
