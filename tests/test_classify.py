"""classify.py and the finetune/predict commands: train on ~60 tweets with a tiny model, label every row."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import headprune
from _tiny import build_tiny_bert
from headprune.classify import build_classifier, finetune, load_classifier, predict, read_texts
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
