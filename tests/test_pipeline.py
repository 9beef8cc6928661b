"""`headprune run` end to end on a tiny model: every stage, summary.json, report, resume after kill -9."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from _executors import refusing_executors
from _tiny import tiny_config
from headprune.config import from_dict
from headprune.pipeline import Pipeline
from headprune.plan import dry_run_text
from headprune.progress import RunProgress
from headprune.workspace import Workspace


def test_summary_has_every_stage(tiny_run) -> None:
    root, _, summary = tiny_run
    on_disk = json.loads((root / "run" / "summary.json").read_text())
    assert on_disk["chosen"] == summary["chosen"]
    assert set(summary["orders"]) == {"OI", "A1"}
    assert summary["orders"]["OI"]["matrix"] is not None and summary["orders"]["A1"]["matrix"] is None
    assert set(summary["h1"]) == {"OI", "A1"} and set(summary["h2"]) == {"OI"} and set(summary["h3"]) == {"OI"}
    assert summary["h1"]["OI"]["k_values"] == [0, 4, 8]
    assert "steps of 4" in summary["h1"]["OI"]["departure"]
    assert set(summary["chosen"]) == {"CM", "MOIH1", "MOIH2", "MOIH3", "MA1H1"}
    for name, entry in summary["chosen"].items():
        assert entry["n_pruned"] == len(entry["pruned_heads"])
        assert 0 <= entry["n_pruned"] < 12
        assert (root / "run" / "chosen" / f"{name}.json").is_file()
    assert summary["chosen"]["CM"]["n_pruned"] == 0
    gen = summary["generalization"]
    for model in summary["chosen"]:
        for ds in ("d", "e"):
            cell = gen[model][ds]
            assert len(cell["scores"]) == 3 and 0.0 <= cell["mean"] <= 1.0
            assert len(cell["adjust_seconds"]) == 3
    assert isinstance(gen["significance"], list)
    assert summary["generalization_seeds"] == [101, 102, 103]
    # Each chosen model's CPU inference, physically pruned, beside its size (Table 13).
    assert set(summary["inference"]) == set(summary["chosen"])
    for speed in summary["inference"].values():
        assert speed["p50_ms"] > 0 and speed["p95_ms"] >= speed["p50_ms"] and speed["per_second"] > 0
        assert speed["threads"] == 1 and speed["batch_size"] == 32
    cm = summary["inference"]["CM"]
    assert cm["p50_speedup"] == 1.0 and cm["throughput_speedup"] == 1.0


def test_random_order_means_are_models_with_per_seed_scores(tiny_run) -> None:
    """MAM<strategy>: per seed the mean over the random orders' models (here one, A1), so it has a std
    over seeds and takes part in the paired t-tests like any model (Tables 9, 10, 12)."""
    _, _, summary = tiny_run
    gen = summary["generalization"]
    for ds in ("d", "e"):
        assert gen["MAMH1"][ds]["scores"] == gen["MA1H1"][ds]["scores"]
        assert gen["MAMH1"][ds]["std"] == gen["MA1H1"][ds]["std"]
    assert "MAMH2" not in gen  # H2 ran for OI only
    from headprune.generalize import significance

    per_seed = {m: {ds: gen[m][ds]["scores"] for ds in ("d", "e")} for m in gen if m != "significance"}
    assert gen["significance"] == significance(per_seed, alpha=0.05)
    assert "MAMH1" in per_seed


def test_step2_comparison_reproduces_tables_7_to_10_from_the_store(tiny_run) -> None:
    """CM, the OI models and MAM on the Step 2 datasets with the Step 2 seeds, from stored scores."""
    root, _, summary = tiny_run
    g2 = summary["step2_comparison"]
    assert set(g2) == {"CM", "MOIH1", "MOIH2", "MOIH3", "MAMH1", "significance"}
    with sqlite3.connect(root / "run" / "store.sqlite") as db:
        stored = {(p, ds, seed): f1 for p, ds, seed, f1 in db.execute("SELECT pruned, dataset, seed, f1 FROM scores")}
    for model in ("CM", "MOIH1", "MOIH2", "MOIH3"):
        key = json.dumps(sorted(summary["chosen"][model]["pruned_heads"]), separators=(",", ":"))
        for ds in ("b", "c"):
            assert g2[model][ds]["scores"] == [stored[(key, ds, s)] for s in (1, 2)]
    key = json.dumps(sorted(summary["chosen"]["MA1H1"]["pruned_heads"]), separators=(",", ":"))
    assert g2["MAMH1"]["b"]["scores"] == [stored[(key, "b", s)] for s in (1, 2)]
    assert set(summary["random_means"]) == {"MAMH1"}
    assert (root / "run" / "orders" / "OI.json").is_file() and (root / "run" / "orders" / "A1.json").is_file()


def test_fresh_seed_comparison_scores_the_chosen_models_on_seeds_no_selection_used(tiny_run, tiny_bert_dir) -> None:
    """By default (step2.fresh_seeds = "auto") Tables 7-10 come again on as many seeds as the
    selection's, 201 on, disjoint from them: the same models, the stored scores of those seeds, the
    same paired t-tests; the selection and its Tables 7-10 are those of a run without it."""
    import shutil

    from headprune.generalize import significance

    root, csvs, summary = tiny_run
    fresh, g2 = summary["step2_fresh_comparison"], summary["step2_comparison"]
    assert summary["step2_fresh_seeds"] == [201, 202] and not {201, 202} & {1, 2}
    assert set(fresh) == set(g2)
    with sqlite3.connect(root / "run" / "store.sqlite") as db:
        stored = {(p, ds, seed): f1 for p, ds, seed, f1 in db.execute("SELECT pruned, dataset, seed, f1 FROM scores")}
    for model, members in (("CM", "CM"), ("MOIH1", "MOIH1"), ("MOIH2", "MOIH2"), ("MOIH3", "MOIH3"),
                           ("MAMH1", "MA1H1")):
        key = json.dumps(sorted(summary["chosen"][members]["pruned_heads"]), separators=(",", ":"))
        for ds in ("b", "c"):
            assert fresh[model][ds]["scores"] == [stored[(key, ds, s)] for s in (201, 202)]
    assert fresh["CM"]["b"]["scores"] != g2["CM"]["b"]["scores"]  # other seeds, other splits
    per_seed = {m: {ds: fresh[m][ds]["scores"] for ds in ("b", "c")} for m in fresh if m != "significance"}
    assert fresh["significance"] == significance(per_seed, alpha=0.05)

    # Off: the same store answers every selection, so the chosen models and Tables 7-10 are the same.
    off = root / "fresh-off"
    off.mkdir()
    shutil.copy(root / "run" / "store.sqlite", off / "store.sqlite")
    raw = tiny_config(tiny_bert_dir, csvs)
    raw["step2"]["fresh_seeds"] = "none"
    without = Pipeline(from_dict(raw, source="tiny.toml"), off, progress=RunProgress(enabled=False)).run()
    assert without["chosen"] == summary["chosen"] and without["step2_comparison"] == g2
    assert "step2_fresh_comparison" not in without and "step2_fresh_seeds" not in without
    assert not any("fresh_seeds" in line for line in without["departures"])
    assert any(line.startswith("step2.fresh_seeds = [201, 202]: ") for line in summary["departures"])


def test_summary_round_trips_through_its_types(tiny_run) -> None:
    """summary.json as the pipeline wrote it is read into the typed Summary and written back unchanged."""
    from headprune.summary import SCHEMA_VERSION, load_summary

    root, _, summary = tiny_run
    on_disk = json.loads((root / "run" / "summary.json").read_text())
    loaded = load_summary(root / "run")
    assert loaded.schema_version == on_disk["schema_version"] == SCHEMA_VERSION
    assert loaded.to_json() == on_disk == summary
    assert json.dumps(loaded.to_json(), indent=1) + "\n" == (root / "run" / "summary.json").read_text()
    assert loaded.orders["A1"].is_random and not loaded.orders["OI"].is_random
    for name, entry in loaded.chosen.items():
        assert entry.to_json() == json.loads((root / "run" / "chosen" / f"{name}.json").read_text())


def test_chosen_models_match_the_store(tiny_run) -> None:
    """The summary's numbers are the stored per-seed scores (nothing invented on the way)."""
    root, _, summary = tiny_run
    with sqlite3.connect(root / "run" / "store.sqlite") as db:
        rows = db.execute("SELECT pruned, dataset, seed, f1 FROM scores").fetchall()
    stored = {(pruned, ds, seed): f1 for pruned, ds, seed, f1 in rows}
    for model, entry in summary["chosen"].items():
        key = json.dumps(sorted(entry["pruned_heads"]), separators=(",", ":"))
        for ds in ("d", "e"):
            expected = [stored[(key, ds, s)] for s in (101, 102, 103)]
            assert summary["generalization"][model][ds]["scores"] == expected


def test_rerun_recomputes_nothing(tiny_run) -> None:
    root, csvs, summary = tiny_run
    progress, log = _logged()
    # Every executor (Step 1, Step 2, the generalization, Table 14's timing) refuses to compute.
    config = from_dict(tiny_config(Path(summary["model"]["name"]), csvs), source="tiny.toml")
    work = Workspace(config, progress, executors=refusing_executors)
    again = Pipeline(config, root / "run", workspace=work).run()
    assert again["chosen"] == summary["chosen"]
    assert again["generalization"] == summary["generalization"]
    # The resumed run says which scores it found: the reference loop's (a CPU run departs in no engine line).
    # once per scorer: Step 2, the fresh seeds' G2 comparison, the generalization
    assert log.getvalue().count("resuming from the store: scores: reference loop\n") == 3
    assert not any(line.startswith("run.engine") for line in again["departures"])


def _logged() -> tuple[RunProgress, io.StringIO]:
    """A RunProgress whose log lines are kept (plain text, no terminal)."""
    from rich.console import Console

    log = io.StringIO()
    return RunProgress(console=Console(file=log, width=400), enabled=True), log


def test_dry_run_prints_the_plan(tiny_run, tiny_bert_dir: Path, monkeypatch) -> None:
    root, csvs, _ = tiny_run
    pipeline = Pipeline(from_dict(tiny_config(tiny_bert_dir, csvs), source="tiny.toml"), root / "dry",
                        progress=RunProgress(enabled=False))
    text = dry_run_text(pipeline)
    assert "Step 1: importance" in text and "1 finetunings" in text
    assert "H1 OI" in text and "12 evaluations" in text  # 3 k x 2 datasets x 2 seeds
    assert "H2 OI" in text and "H3 OI" in text and "H1 A1" in text
    assert "generalization" in text and "30 evaluations" in text  # 5 models x 2 datasets x 3 seeds
    assert "Tables 7-10 (G2)" in text  # from the stored Step 2 scores (CM is k = 0 of H1)
    assert "G2 on fresh seeds" in text and "at most 20 evaluations" in text  # 5 models x 2 datasets x 2 seeds
    assert "adjusting runs timed alone" not in text  # the reference loop's scores carry their own times
    assert "estimate on this device" in text and "(reference loop" in text
    assert not (root / "dry" / "store.sqlite").exists()
    for workers, says in ((1, "(reference loop; one adjusting step per model = "),
                          (3, "(reference loop in 3 worker processes of 1 thread; one adjusting step per model = ")):
        raw = tiny_config(tiny_bert_dir, csvs)
        raw["run"].update(workers=workers)
        if workers > 1:
            monkeypatch.setattr(os, "cpu_count", lambda: 3)  # a 3-core machine: 1 thread each
        text = dry_run_text(Pipeline(from_dict(raw, source="tiny.toml"), root / "dry",
                                     progress=RunProgress(enabled=False)))
        assert says in text, text

    raw = tiny_config(tiny_bert_dir, csvs)
    raw["run"].update(engine="batched", pack_models=4)
    batched = Pipeline(from_dict(raw, source="tiny.toml"), root / "dry", progress=RunProgress(enabled=False))
    text = dry_run_text(batched)
    assert "(batched engine, stacks of 4 (Step 2) and 3 models; one adjusting step per model = " in text
    assert "Table 14: each model adjusting alone" in text and "30 adjusting runs timed alone" in text
    assert not (root / "dry" / "store.sqlite").exists()


def _store_rows(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        with sqlite3.connect(path, timeout=30) as db:
            return {key: (f1, created) for key, f1, created in db.execute("SELECT key, f1, created FROM scores")}
    except sqlite3.OperationalError:
        return {}


def test_killed_run_resumes_without_recomputing(tiny_run, tmp_path: Path) -> None:
    root, csvs, summary = tiny_run
    config_path = tmp_path / "tiny.toml"
    config = tiny_config(Path(summary["model"]["name"]), csvs)
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    config_path.write_text("\n".join(lines) + "\n")
    run_dir = tmp_path / "run"
    command = [sys.executable, "-c", "from headprune.cli import main; main()", "run", "--config", str(config_path),
               "--run-dir", str(run_dir)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(_store_rows(run_dir / "store.sqlite")) < 8 and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = _store_rows(run_dir / "store.sqlite")
    assert len(before) >= 8, "the run should have stored some scores before it was killed"
    assert not (run_dir / "summary.json").exists()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    after = _store_rows(run_dir / "store.sqlite")
    assert all(after[key] == value for key, value in before.items()), "a stored score was recomputed"
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["chosen"] == summary["chosen"]
    for model in summary["chosen"]:
        for ds in ("d", "e"):
            assert resumed["generalization"][model][ds]["scores"] == summary["generalization"][model][ds]["scores"]


def test_report_of_a_real_run(tiny_run) -> None:
    """The report renders what the pipeline wrote: every section and figure, real numbers in it."""
    import re

    from headprune.report import write_report

    root, _, summary = tiny_run
    path = write_report(root / "run")
    html = path.read_text()
    for section in ("overview", "importance", "architectures", "h1", "h2", "h3", "comparison", "heads-pruned",
                    "size", "adjust-time", "run"):
        assert f'id="{section}"' in html, section
    images = re.findall(r'<img[^>]+src="data:image/png;base64,', html)
    figures = sorted((path.parent / "figures").glob("*.png"))
    assert {"importance_OI.png", "importance_A1.png", "h1_OI.png", "h1_A1.png"} <= {f.name for f in figures}
    assert len(images) == len(figures)
    cm = summary["generalization"]["CM"]["d"]["mean"]
    assert f"{100 * cm:.2f}" in html  # the report shows F1-macro x 100
    assert (path.parent / "tables.md").read_text().count("|") > 50


def test_batched_engine_packs_step2_but_not_the_generalization(tiny_run, tmp_path: Path) -> None:
    """`run.engine = "batched"` (what a GPU gets): Step 2 candidates train together in masked packs,
    the generalization check trains each chosen model on its own (its adjusting time is its own);
    both kinds of score are stored under their own engine tag, and a rerun recomputes nothing."""
    root, csvs, summary = tiny_run
    raw = tiny_config(Path(summary["model"]["name"]), csvs)
    raw["run"].update(engine="batched", pack_models=8)
    run_dir = tmp_path / "batched"
    batched = Pipeline(from_dict(raw, source="tiny.toml"), run_dir, progress=RunProgress(enabled=False)).run()
    assert set(batched["chosen"]) == set(summary["chosen"])
    with sqlite3.connect(run_dir / "store.sqlite") as db:
        rows = db.execute("SELECT dataset, settings FROM scores").fetchall()
    tags = {(ds, json.loads(settings)["engine"]) for ds, settings in rows}
    assert tags == {("b", "batched-packed"), ("c", "batched-packed"), ("d", "batched"), ("e", "batched")}
    from headprune.engine import DROPOUT_STREAMS

    keyed = {(ds, json.loads(settings).get("precision"), json.loads(settings).get("dropout"),
              json.loads(settings).get("pack_models")) for ds, settings in rows}
    assert keyed == {("b", "fp32", DROPOUT_STREAMS, 8), ("c", "fp32", DROPOUT_STREAMS, 8),
                     ("d", "fp32", DROPOUT_STREAMS, None), ("e", "fp32", DROPOUT_STREAMS, None)}
    assert any(line.startswith("run.engine = batched: ") and "equal to the reference loop's only statistically"
               in line for line in batched["departures"])
    for model in batched["chosen"]:
        assert all(0.0 <= f <= 1.0 for f in batched["generalization"][model]["d"]["scores"])
    # Table 14: the engine trains a model's seeds in one stack, whose wall time they share; each model
    # is also timed adjusting alone (the reference loop), and that is what Table 14 shows.
    for model in batched["chosen"]:
        for ds in ("d", "e"):
            cell = batched["generalization"][model][ds]
            assert cell["adjust_seeds"] == [101, 102, 103]
            assert len(set(cell["engine_adjust_seconds"])) == 1  # a stack's shared time
            assert len(cell["adjust_seconds"]) == 3 and len(set(cell["adjust_seconds"])) == 3  # each its own
    with sqlite3.connect(run_dir / "store.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM timings").fetchone()[0] == len(
            {json.dumps(sorted(e["pruned_heads"])) for e in batched["chosen"].values()}) * 2 * 3

    progress, log = _logged()  # the executors refuse: the scores and the Table 14 times come from the store
    config = from_dict(raw, source="tiny.toml")
    again = Pipeline(config, run_dir, workspace=Workspace(config, progress, executors=refusing_executors)).run()
    assert again["generalization"] == batched["generalization"]
    said = log.getvalue()  # the resumed run says which scores (engine, key) it found in the store
    resumed = "resuming from the store: scores: batched engine (fp32, "
    streams = f"dropout per stack: {DROPOUT_STREAMS})"
    statistically = ": equal to the reference loop's statistically"
    assert f"{resumed}packs of 8, step ratio 1.25, {streams}{statistically}" in said  # Step 2
    assert f"{resumed}one candidate's seeds per stack, {streams}{statistically}" in said  # generalization


def _toml(config: dict) -> str:
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def test_time_limit_and_overrides_of_run(tiny_run, tmp_path: Path, monkeypatch, capsys) -> None:
    """`--time-limit 0` on a new run: nothing starts, exit 3 with one line saying how to go on; on a
    finished run's store it completes (nothing is left to start). `--model`/`--data-dir` override the
    configuration."""
    import shutil

    from _cli import run_cli

    root, csvs, summary = tiny_run
    raw = tiny_config(Path("not-a-model"), csvs)
    raw["data"] = {"data_dir": "nowhere"}
    config_path = tmp_path / "tiny.toml"
    config_path.write_text(_toml(raw))
    model = summary["model"]["name"]
    code, _, err = run_cli(monkeypatch, capsys, "run", "--config", config_path, "--run-dir", tmp_path / "new",
                           "--model", model, "--data-dir", tmp_path, "--time-limit", "0")
    assert code == 3, err
    assert err.strip().splitlines()[-1] == (
        "stopped: time limit reached during Step 1; finished finetunings are in the store; "
        "run the same command again to go on")
    assert not (tmp_path / "new" / "summary.json").exists()

    shutil.copytree(root / "run", tmp_path / "done", ignore=shutil.ignore_patterns("summary.json", "report"))
    code, _, err = run_cli(monkeypatch, capsys, "run", "--config", config_path, "--run-dir", tmp_path / "done",
                           "--model", model, "--data-dir", tmp_path, "--time-limit", "0")
    assert code == 0, err
    done = json.loads((tmp_path / "done" / "summary.json").read_text())
    assert done["generalization"] == summary["generalization"]
    assert done["config"]["model"]["name"] == model and done["config"]["data"]["data_dir"] == str(tmp_path)
