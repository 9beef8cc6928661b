"""classify.py and the finetune/predict commands: train on ~60 tweets with a tiny model, label every row."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import headprune
from _cli import run_cli
from _tiny import build_tiny_bert
from headprune.classify import (
    build_classifier,
    finetune,
    load_classifier,
    predict,
    read_texts,
    write_predictions,
)
from headprune.data import load_dataset, resolve_data_dir
from headprune.errors import HeadpruneError
from headprune.export import export_heads

CLI = [sys.executable, "-c", "from headprune.cli import main; main()"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert-classify"))


@pytest.fixture(scope="module")
def pruned_dir(tiny_dir, tmp_path_factory) -> Path:
    return export_heads(str(tiny_dir), "0:1;1:0,2", tmp_path_factory.mktemp("pruned") / "model")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """small.csv: 30 positive + 30 negative tweets of person.csv; eval.csv: 10 others; odd.csv: a new label."""
    frame = pd.read_csv(resolve_data_dir() / "person.csv", dtype=str, keep_default_na=False)
    directory = tmp_path_factory.mktemp("classify-data")
    by_class = {c: frame[frame["class"] == c] for c in ("positive", "negative")}
    pd.concat([f.head(30) for f in by_class.values()]).to_csv(directory / "small.csv", index=False)
    pd.concat([f.iloc[30:35] for f in by_class.values()]).to_csv(directory / "eval.csv", index=False)
    odd = pd.concat([f.iloc[30:33] for f in by_class.values()])
    odd.iloc[:2, odd.columns.get_loc("class")] = "neutral"
    odd.to_csv(directory / "odd.csv", index=False)
    return directory


@pytest.fixture(scope="module")
def trained(tiny_dir, data_dir, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("clf") / "classifier"
    result = finetune(str(tiny_dir), load_dataset(data_dir / "small.csv"), None, out, epochs=1)
    return result, out


def test_finetune_reports_f1_and_saves(trained):
    result, out = trained
    assert 0.0 <= result["f1_macro"] <= 1.0 and result["seconds"] > 0
    assert result["n_train"] == 48 and result["n_eval"] == 12  # seeded stratified 20% held out
    assert "held-out 12 of 60" in result["eval"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "headprune-classifier.json"):
        assert (out / name).is_file()
    meta = json.loads((out / "headprune-classifier.json").read_text())
    assert meta["labels"] == ["negative", "positive"] and meta["pruned_heads"] == []
    assert meta["metrics"]["f1_macro"] == result["f1_macro"]


def test_predict_labels_every_row(trained, data_dir):
    _, out = trained
    classifier = load_classifier(out)
    texts = pd.read_csv(data_dir / "small.csv", dtype=str, keep_default_na=False)["tweet"].tolist()
    labels, probabilities = predict(classifier, texts)
    assert len(labels) == len(texts) == 60
    assert set(labels) <= {"negative", "positive"}
    assert probabilities.shape == (60, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_finetune_is_deterministic(tiny_dir, data_dir, tmp_path, trained):
    again = finetune(str(tiny_dir), load_dataset(data_dir / "small.csv"), None, tmp_path / "again", epochs=1)
    assert again["f1_macro"] == trained[0]["f1_macro"]
    texts = ["i love this movie", "worst day ever @someone"]
    _, p1 = predict(load_classifier(trained[1]), texts)
    _, p2 = predict(load_classifier(tmp_path / "again"), texts)
    np.testing.assert_array_equal(p1, p2)


def test_pruned_encoder_keeps_its_structure_and_weights(pruned_dir, data_dir, tmp_path):
    mlm, _ = headprune.load_model(str(pruned_dir))
    classifier = build_classifier(mlm, ["negative", "positive"])
    assert headprune.pruned_heads(classifier) == headprune.pruned_heads(mlm) == [(0, 1), (1, 0), (1, 2)]
    for name, tensor in mlm.base_model.state_dict().items():
        torch.testing.assert_close(classifier.base_model.state_dict()[name], tensor, rtol=0, atol=0)
    result = finetune(str(pruned_dir), load_dataset(data_dir / "small.csv"), load_dataset(data_dir / "eval.csv"),
                      tmp_path / "pruned-clf", epochs=1)
    assert result["n_eval"] == 10 and result["n_pruned_heads"] == 3
    loaded = load_classifier(tmp_path / "pruned-clf")
    assert headprune.pruned_heads(loaded.model) == [(0, 1), (1, 0), (1, 2)]
    assert loaded.meta["base"] == str(pruned_dir)


def test_unknown_eval_labels_name_the_file_and_labels(tiny_dir, data_dir, tmp_path):
    with pytest.raises(HeadpruneError, match=r"odd\.csv: label\(s\) not in the training data .*small\.csv.*: neutral"):
        finetune(str(tiny_dir), load_dataset(data_dir / "small.csv"), load_dataset(data_dir / "odd.csv"),
                 tmp_path / "x", epochs=1)


def test_not_a_classifier_directory(tiny_dir):
    with pytest.raises(HeadpruneError, match="not a classifier directory"):
        load_classifier(tiny_dir)


@pytest.mark.parametrize(
    "name, content, fmt",
    [
        ("t.csv", "id,tweet\n1,hello there\n2,\"a, b\"\n", "auto"),
        ("t.tsv", "tweet\tid\nhello there\t1\na, b\t2\n", "auto"),
        ("t.jsonl", '{"tweet": "hello there"}\n{"tweet": "a, b"}\n', "auto"),
        ("t.txt", "hello there\na, b\n\n", "auto"),
        ("t.data", "hello there\na, b\n", "lines"),
    ],
)
def test_read_texts_formats(tmp_path, name, content, fmt):
    path = tmp_path / name
    path.write_text(content)
    assert read_texts(str(path), fmt=fmt) == ["hello there", "a, b"]


def test_read_texts_missing_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\nhi,pos\n")
    with pytest.raises(HeadpruneError, match=r"no column 'tweet' \(--text-column\); the columns are: text, label"):
        read_texts(str(path))


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], input=stdin, check=False, capture_output=True, text=True, timeout=300)


def test_cli_finetune_then_predict_from_stdin(tiny_dir, data_dir, tmp_path):
    out = tmp_path / "cli-clf"
    done = _run(["finetune", "--model", str(tiny_dir), "--train", str(data_dir / "small.csv"), "--out", str(out),
                 "--epochs", "1"])
    assert done.returncode == 0, done.stderr
    assert "F1-macro: " in done.stdout and "time: " in done.stdout
    tweets = "I love it @bob\nterrible, awful service http://x.co\n"
    labelled = _run(["predict", "--model", str(out), "-"], stdin=tweets)
    assert labelled.returncode == 0, labelled.stderr
    rows = list(csv.reader(io.StringIO(labelled.stdout)))
    assert rows[0] == ["text", "label", "p_negative", "p_positive"]
    assert [r[0] for r in rows[1:]] == ["I love it @bob", "terrible, awful service http://x.co"]
    assert all(r[1] in ("negative", "positive") for r in rows[1:])
    assert all(abs(float(r[2]) + float(r[3]) - 1) < 1e-4 for r in rows[1:])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--text-column", "text"], "small.csv: no column 'text' (--text-column); the columns are: tweet, class"),
        (["--eval", "{data}/odd.csv"], "odd.csv: label(s) not in the training data"),
    ],
)
def test_cli_user_mistakes_are_one_line_exit_2(tiny_dir, data_dir, tmp_path, extra, message):
    extra = [e.format(data=data_dir) for e in extra]
    result = _run(["finetune", "--model", str(tiny_dir), "--train", str(data_dir / "small.csv"),
                   "--out", str(tmp_path / "x"), "--epochs", "1", *extra])
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


# ----------------------------------------------------------------------------- predictions as CSV

TRICKY = [
    "plain tweet",
    "commas, inside, it",
    'she said "no" and "yes"',
    '"starts with a quote',
    "two\nlines",
    "windows\r\nline",
    "a lone\rcarriage return",
    "tab\tinside",
    "  spaces around  ",
    "",
    "NA",
    "emoji \U0001f600 and \u2028 separator",
]


def _read_back(text: str) -> tuple[list[list[str]], pd.DataFrame]:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    frame = pd.read_csv(io.StringIO(text, newline=""), dtype=str, keep_default_na=False)
    return rows, frame


def test_write_predictions_reads_back_to_the_exact_texts():
    out = io.StringIO(newline="")
    labels = ["positive", "negative"] * (len(TRICKY) // 2)
    probabilities = np.tile([[0.25, 0.75]], (len(TRICKY), 1))
    write_predictions(out, TRICKY, labels, probabilities, ["negative", "positive"])
    rows, frame = _read_back(out.getvalue())
    assert rows[0] == ["text", "label", "p_negative", "p_positive"]
    assert [r[0] for r in rows[1:]] == TRICKY and [r[1] for r in rows[1:]] == labels
    assert all(r[2:] == ["0.250000", "0.750000"] for r in rows[1:])
    assert frame["text"].tolist() == TRICKY and frame["label"].tolist() == labels
    assert out.getvalue().startswith("text,label,p_negative,p_positive\nplain tweet,positive,0.250000,0.750000\n")


def test_cli_predict_round_trips_tricky_texts(trained, tmp_path, monkeypatch, capsys):
    _, out = trained
    source = tmp_path / "tricky.jsonl"
    source.write_text("".join(json.dumps({"tweet": t}) + "\n" for t in TRICKY), encoding="utf-8")
    code, stdout, stderr = run_cli(monkeypatch, capsys, "predict", "--model", out, source)
    assert code == 0, stderr
    rows, frame = _read_back(stdout)
    assert [r[0] for r in rows[1:]] == TRICKY
    assert frame["text"].tolist() == TRICKY and set(frame["label"]) <= {"negative", "positive"}


# ----------------------------------------------------------------------------- predict's mistakes


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("t.tsv", "tweet\tid\nhello\t1\nagain\t2\textra\n",
         "line 3 has 3 fields, the header (line 1) has 2: tweet, id; a value that contains a tab must be in double "
         "quotes"),
        ("t.csv", "id,tweet\n1,hello\n2\n",
         "line 3 has 1 field(s), the header (line 1) has 2: id, tweet: no value for column 'tweet'"),
        ("t.jsonl", '{"tweet": "a"}\n"just a string"\n',
         "line 2 is a string, not a JSON object with the keys 'tweet' (JSON lines: one object per line)"),
        ("t.jsonl", '{"tweet": "a"}\n{"text": "b"}\n', "line 2 has no 'tweet' (--text-column); its keys are: text"),
        ("t.jsonl", '{"tweet": ["a"]}\n', "line 1, column 'tweet': expected a string, got a list"),
        ("t.txt", b"fine\n\nnot caf\xe9\n",
         "1 line(s) are not valid UTF-8, the first is line 3; re-save the file as UTF-8"),
    ],
)
def test_read_texts_malformed_rows(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(HeadpruneError) as err:
        read_texts(str(path))
    assert str(err.value) == f"{path}: {expected}"


def _damage(classifier: Path, tmp_path: Path, how: str) -> Path:
    copy = tmp_path / f"clf-{how}"
    shutil.copytree(classifier, copy)
    if how == "bad-json":
        (copy / "headprune-classifier.json").write_text('{"labels": ["a", "b"],\n "format": }\n')
    elif how == "one-label":
        (copy / "headprune-classifier.json").write_text('{"labels": ["a"]}\n')
    elif how == "three-labels":
        (copy / "headprune-classifier.json").write_text('{"labels": ["a", "b", "c"]}\n')
    elif how == "no-weights":
        (copy / "model.safetensors").unlink()
    elif how == "truncated":
        data = (copy / "model.safetensors").read_bytes()
        (copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    return copy


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("bad-json", "{dir}/headprune-classifier.json: not valid JSON (line 2, column 12: Expecting value)"),
        ("one-label", "{dir}/headprune-classifier.json: 'labels' must be a list of at least two label names"),
        ("three-labels", "{dir}/headprune-classifier.json: lists 3 labels, the model in {dir} has 2 outputs"),
        ("no-weights", "{dir}: incomplete classifier directory (no model.safetensors); write it again with "
                       "`headprune finetune`"),
        ("truncated", "{dir}: damaged classifier directory (SafetensorError: "),
    ],
)
def test_cli_predict_with_a_damaged_classifier(trained, tmp_path, monkeypatch, capsys, how, expected):
    directory = _damage(trained[1], tmp_path, how)
    texts = tmp_path / "texts.txt"
    texts.write_text("hello\n")
    code, out, err = run_cli(monkeypatch, capsys, "predict", "--model", directory, texts)
    assert code == 2 and out == "" and "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("error: " + expected.format(dir=directory)), err


def test_cli_predict_without_a_classifier(tiny_dir, tmp_path, monkeypatch, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("hello\n")
    code, _, err = run_cli(monkeypatch, capsys, "predict", "--model", tmp_path / "nowhere", texts)
    assert (code, err) == (2, f"error: --model {tmp_path / 'nowhere'}: no such classifier directory\n")
    code, _, err = run_cli(monkeypatch, capsys, "predict", "--model", tiny_dir, texts)
    assert code == 2 and err == (
        f"error: {tiny_dir}: not a classifier directory (no headprune-classifier.json; make one with "
        "`headprune finetune`)\n"
    )
