"""`headprune score` end to end: a run killed with SIGKILL resumes from the store without
recomputing what it had stored; the output format; bad inputs (one line `error: ...`, exit 2)."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _cli import run_cli
from headprune.importance import random_order
from headprune.models import count_parameters, load_model
from headprune.surgery import format_head_spec

CLI = [sys.executable, "-c", "from headprune.cli import main; main()"]
RESULT_LINE = re.compile(
    r"^(?P<name>.+): F1-macro (?P<mean>\d\.\d{4}) \(std (?P<std>\d\.\d{4})\) over seeds \[(?P<seeds>[^\]]*)\]; "
    r"adjusting \d+\.\d s; (?P<params>[\d,]+) parameters; \d+\.\d MiB$"
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def csv80(make_dataset_csv) -> Path:
    """40 tweets per class: `score` uses 10 folds, so each class needs 20 in the classification half."""
    return make_dataset_csv(per_class=40, name="tweets80.csv")


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}




def stored_rows(path: Path) -> dict[str, tuple[float, float]]:
    with sqlite3.connect(path, timeout=30) as conn:
        return {key: (f1, created) for key, f1, created in conn.execute("SELECT key, f1, created FROM scores")}


def count_rows(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
    except sqlite3.OperationalError:  # schema not written yet
        return 0


def result_line(out: str) -> re.Match:
    matches = [m for m in map(RESULT_LINE.match, out.splitlines()) if m]
    assert len(matches) == 1, out
    return matches[0]


# ----------------------------------------------------------------------------- kill -9 and resume


def test_killed_score_run_resumes_without_recomputing(tiny_bert_dir: Path, csv80: Path, tmp_path: Path,
                                                      monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    store = run_dir / "store.sqlite"
    args = ["score", "--model", tiny_bert_dir, "--dataset", csv80, "--seeds", "1-4", "--epochs", "1",
            "--warmup-steps", "0"]
    command = [*CLI, *map(str, args), "--run-dir", str(run_dir)]

    with open(tmp_path / "killed.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env(), cwd=tmp_path)
        try:
            deadline = time.monotonic() + 180
            while count_rows(store) < 1:
                assert process.poll() is None, (tmp_path / "killed.log").read_text()
                assert time.monotonic() < deadline, "no score stored within 180 s"
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=30) == -signal.SIGKILL
        finally:
            if process.poll() is None:  # a failed assertion above: leave no process behind
                process.kill()
                process.wait(timeout=30)
    before = stored_rows(store)
    assert 1 <= len(before) < 4, f"the run was not interrupted ({len(before)} rows)"

    # The same command again, to completion (in this process: a subprocess would pay ~8 s of imports again).
    code, out, err = run_cli(monkeypatch, capsys, *args, "--run-dir", run_dir)
    assert code == 0, err
    after = stored_rows(store)
    assert len(after) == 4
    for key, row in before.items():
        assert after[key] == row  # same F1 and same `created`: not recomputed
    assert f"done: 4 evaluations, {len(before)} from store" in err  # the progress line says so
    resumed_line = result_line(out)
    assert resumed_line["name"] == csv80.stem  # a user file is shown by its display name

    # An uninterrupted run of the same command in another run directory (here, in process).
    fresh_dir = tmp_path / "fresh"
    code, out, err = run_cli(monkeypatch, capsys, *args, "--run-dir", fresh_dir)
    assert code == 0, err
    fresh_line = result_line(out)
    assert fresh_line["mean"] == resumed_line["mean"] and fresh_line["std"] == resumed_line["std"]
    assert fresh_line["seeds"] == resumed_line["seeds"]
    fresh_rows = stored_rows(fresh_dir / "store.sqlite")
    assert {k: f1 for k, (f1, _) in fresh_rows.items()} == {k: f1 for k, (f1, _) in after.items()}  # bit-equal


# ----------------------------------------------------------------------------- output format


def test_score_output_format(tiny_bert_dir: Path, csv80: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    common = ["--model", tiny_bert_dir, "--dataset", csv80, "--epochs", "1", "--warmup-steps", "0",
              "--run-dir", run_dir]
    code, out, err = run_cli(monkeypatch, capsys, "score", *common, "--prune", "0:1; 2:*", "--seeds", "1,2")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2, out
    header = re.fullmatch(r"model (.+) \(([0-9a-f]{16})\), pruning 5 heads: 0:1;2:\*", lines[0])
    assert header and header[1] == str(tiny_bert_dir), lines[0]
    line = result_line(out)
    assert line["name"] == csv80.stem
    per_seed = re.fullmatch(r"1: (\d\.\d{4}), 2: (\d\.\d{4})", line["seeds"])
    assert per_seed, line["seeds"]
    rows = sorted(stored_rows(run_dir / "store.sqlite").values(), key=lambda r: r[1])
    assert len(rows) == 2
    f1s = [f1 for f1, _ in rows]
    assert sorted(f"{f:.4f}" for f in f1s) == sorted([per_seed[1], per_seed[2]])
    assert line["mean"] == f"{np.mean(f1s):.4f}" and line["std"] == f"{np.std(f1s, ddof=1):.4f}"
    model, _ = load_model(str(tiny_bert_dir))
    assert line["params"] == f"{count_parameters(model) - 9592:,}"  # 1 head (1,048) + layer 2 (8,544)

    # --order/--k: its k least important heads.
    order = random_order(3, 4, seed=7)
    order_path = order.save(tmp_path / "A7.json")
    code, out, err = run_cli(monkeypatch, capsys, "score", *common, "--order", order_path, "--k", "2",
                             "--seeds", "1")
    assert code == 0, err
    least = order.least_important(2)
    spec = format_head_spec({layer: [h for l, h in least if l == layer] for layer, _ in least}, 4)
    assert out.splitlines()[0].endswith(f"pruning 2 heads: {spec}"), out
    assert result_line(out)["seeds"].startswith("1: ")


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--prune", "0:x"], "--prune: cannot read '0:x'"),
        (["--prune", "0:*;1:*;2:*"], "cannot prune every head"),
        (["--order", "ORDER", "--seeds", "1"], "--order needs --k"),
        (["--dataset", "no-such-dataset"], "unknown dataset or group 'no-such-dataset'"),
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    ],
    ids=["malformed-prune", "all-heads", "order-without-k", "unknown-dataset", "no-epochs"],
)
def test_score_bad_inputs(extra: list[str], fragment: str, tiny_bert_dir: Path, csv80: Path, tmp_path: Path,
                          monkeypatch, capsys) -> None:
    order_path = random_order(3, 4, seed=1).save(tmp_path / "A1.json")
    extra = [str(order_path) if e == "ORDER" else e for e in extra]
    args = ["score", "--model", tiny_bert_dir, "--epochs", "1", "--warmup-steps", "0", "--run-dir",
            tmp_path / "run"]
    if "--dataset" not in extra:
        args += ["--dataset", csv80]
    code, out, err = run_cli(monkeypatch, capsys, *args, *extra)
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert not (tmp_path / "run" / "store.sqlite").exists()  # refused before any scoring


def test_importance_refuses_no_epochs(tiny_bert_dir: Path, csv80: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    code, out, err = run_cli(monkeypatch, capsys, "importance", "--model", tiny_bert_dir, "--datasets", csv80,
                             "--epochs", "0", "--run-dir", tmp_path / "run", "--out", tmp_path / "order.json")
    assert code == 2 and err.splitlines() == ["error: --epochs must be at least 1, got 0"], (code, out, err)
    assert not (tmp_path / "run" / "store.sqlite").exists() and not (tmp_path / "order.json").exists()


def test_importance_command_writes_a_loadable_order_and_resumes(tiny_bert_dir: Path, csv80: Path, tmp_path: Path,
                                                                monkeypatch, capsys) -> None:
    from headprune.importance import Order

    out = tmp_path / "order.json"
    args = ["importance", "--model", tiny_bert_dir, "--datasets", csv80, "--seeds", "1-2", "--epochs", "1",
            "--warmup-steps", "0", "--run-dir", tmp_path / "run", "--out", out]
    code, stdout, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    order = Order.load(out)
    assert (order.n_layers, order.n_heads, order.kind) == (3, 4, "importance")
    assert order.seeds == [1, 2] and len(order.ranked) == 12
    assert "12 heads ranked" in stdout
    with sqlite3.connect(tmp_path / "run" / "store.sqlite") as db:  # per finetuning: its OI and statistics rows
        assert db.execute("SELECT COUNT(*) FROM importance WHERE settings NOT LIKE '%statistics%'").fetchone()[0] == 2
        assert db.execute("SELECT COUNT(*) FROM importance").fetchone()[0] == 4
    code, _, err = run_cli(monkeypatch, capsys, *args)  # answered by the store: same order
    assert code == 0 and "2 from store" in err
    assert Order.load(out).ranked == order.ranked
    # The other Step 1 criteria read the statistics rows of the same finetunings: nothing runs again.
    code, stdout, err = run_cli(monkeypatch, capsys, *args[:-1], tmp_path / "fisher.json", "--criterion", "fisher")
    assert code == 0 and "2 from store" in err, err
    fisher = Order.load(tmp_path / "fisher.json")
    assert fisher.name == "fisher" and fisher.settings["statistics"] == "raw-abs-sq" and len(fisher.runs) == 2
    code, _, err = run_cli(monkeypatch, capsys, "importance", "--model", tiny_bert_dir, "--criterion", "magnitude",
                           "--datasets", "nope", "--warmup-steps", "0", "--run-dir", tmp_path / "run", "--out",
                           tmp_path / "magnitude.json")  # no data: the datasets are not even read
    assert code == 0, err
    assert Order.load(tmp_path / "magnitude.json").kind == "weights"
    code, _, err = run_cli(monkeypatch, capsys, *args, "--criterion", "OI-Layer")
    assert code == 2 and err.count("\n") == 1 and "unknown order 'OI-Layer': use OI, OI-layer, fisher" in err

    code, _, err = run_cli(monkeypatch, capsys, "importance", "--model", tiny_bert_dir, "--random", "3",
                           "--warmup-steps", "0", "--run-dir", tmp_path / "run", "--out", tmp_path / "a3.json")
    assert code == 0, err
    a3 = Order.load(tmp_path / "a3.json")
    assert a3.kind == "random" and a3.name == "A3" and a3.ranked == random_order(3, 4, seed=3).ranked

    code, _, err = run_cli(monkeypatch, capsys, "importance", "--model", tiny_bert_dir, "--datasets", "nope",
                           "--run-dir", tmp_path / "run", "--out", out)
    assert code == 2 and err.count("\n") == 1 and "unknown dataset or group 'nope'" in err
