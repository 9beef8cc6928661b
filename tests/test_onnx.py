"""ONNX export and onnxruntime inference (deploy.py): tiny pruned BERT and RoBERTa models with a
different number of heads per layer and one layer removed, exported and compared with PyTorch;
a finetuned classifier's probabilities and `headprune predict`'s labels on a bundled dataset; the
model card's recipe run as written; the one-line error when the extra is missing."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import headprune
from _cli import run_cli
from _tiny import CHOSEN_PRUNED, build_tiny_bert, make_summary, write_summary
from headprune.classify import finetune, load_classifier, predict
from headprune.data import load_dataset, preprocess, resolve_data_dir
from headprune.deploy import TOLERANCE, load_onnx, require, save_onnx
from headprune.errors import HeadpruneError
from headprune.export import export_directory, export_heads
from headprune.scoring import encode, pad_batch
from headprune.surgery import kept_heads

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 3 layers x 4 heads (conftest.TINY): 3 heads left in layer 0, layer 1 removed, 1 head in layer 2.
PRUNE = {0: [1], 1: [0, 1, 2, 3], 2: [0, 2, 3]}
KEPT = {0: [0, 2, 3], 2: [1]}


@pytest.fixture(scope="module")
def person_texts() -> list[str]:
    frame = pd.read_csv(resolve_data_dir() / "person.csv", dtype=str, keep_default_na=False)
    return [preprocess(t) for t in frame["tweet"]]


def _batches(tokenizer, texts: list[str]):
    """Padded batches of several sizes and lengths (none the traced shape), as predict builds them."""
    ids = encode(tokenizer, texts, 128)
    pad_id = tokenizer.pad_token_id
    for chunk in (ids[:7], ids[7:8], ids[8:40], ids[40:43]):
        yield pad_batch(chunk, pad_id)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_onnx_encoder_matches_pytorch(request, family, person_texts, tmp_path):
    model, tokenizer = headprune.load_model(str(request.getfixturevalue(f"tiny_{family}_dir")))
    headprune.prune_heads(model, PRUNE)
    assert kept_heads(model) == KEPT
    out = save_onnx(model, tokenizer, tmp_path / "onnx", "encoder")
    onnx_model, onnx_tokenizer, meta = load_onnx(out)
    assert meta["kind"] == "encoder" and meta["kept"] == {"0": [0, 2, 3], "2": [1]}
    assert [(i.name, i.shape) for i in onnx_model.session.get_inputs()] == [
        ("input_ids", ["batch", "sequence"]),
        ("attention_mask", ["batch", "sequence"]),
    ]
    assert onnx_tokenizer(["hello world"])["input_ids"] == tokenizer(["hello world"])["input_ids"]
    for input_ids, attention in _batches(tokenizer, person_texts):
        with torch.no_grad():
            expected = model.base_model(input_ids=input_ids, attention_mask=attention).last_hidden_state
        got = onnx_model(input_ids=input_ids, attention_mask=attention).last_hidden_state
        assert got.shape == expected.shape
        assert float((got - expected).abs().max()) <= 1e-4
    with pytest.raises(HeadpruneError, match="an ONNX encoder, not a classifier"):
        load_classifier(out)


# ----------------------------------------------------------------------------- classifiers


@pytest.fixture(scope="module")
def train_csv(tmp_path_factory, person_frame) -> Path:
    frame = pd.concat([person_frame[person_frame["class"] == c].head(30) for c in ("positive", "negative")])
    path = tmp_path_factory.mktemp("onnx-data") / "small.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def bert_classifiers(tiny_bert_dir, train_csv, tmp_path_factory) -> tuple[Path, Path]:
    """(PyTorch classifier directory, its ONNX export) of a pruned tiny BERT, finetuned one epoch."""
    root = tmp_path_factory.mktemp("onnx-clf")
    encoder = export_heads(str(tiny_bert_dir), PRUNE, root / "encoder")
    finetune(str(encoder), load_dataset(train_csv), None, root / "clf", epochs=1)
    return root / "clf", export_directory(root / "clf", root / "clf-onnx")


def test_onnx_classifier_probabilities_match_pytorch(bert_classifiers, person_texts):
    torch_dir, onnx_dir = bert_classifiers
    pytorch, onnx = load_classifier(torch_dir), load_classifier(onnx_dir)
    assert onnx.labels == pytorch.labels == ["negative", "positive"]
    assert kept_heads(pytorch.model) == KEPT
    labels, expected = predict(pytorch, person_texts[:60], batch_size=16)
    onnx_labels, got = predict(onnx, person_texts[:60], batch_size=16)
    assert np.abs(got - expected).max() <= 1e-4
    assert onnx_labels == labels


def test_roberta_classifier_probabilities_match_pytorch(tiny_roberta_dir, train_csv, person_texts, tmp_path):
    encoder = export_heads(str(tiny_roberta_dir), PRUNE, tmp_path / "encoder")
    finetune(str(encoder), load_dataset(train_csv), None, tmp_path / "clf", epochs=1)
    pytorch = load_classifier(tmp_path / "clf")
    save_onnx(pytorch.model, pytorch.tokenizer, tmp_path / "onnx", "classifier", extra={"labels": pytorch.labels})
    _, expected = predict(pytorch, person_texts[:50], batch_size=8)
    _, got = predict(load_classifier(tmp_path / "onnx"), person_texts[:50], batch_size=8)
    assert np.abs(got - expected).max() <= 1e-4


def test_cli_predict_onnx_gives_the_pytorch_labels_on_a_bundled_dataset(bert_classifiers, monkeypatch, capsys):
    person = resolve_data_dir() / "person.csv"
    outputs = []
    for directory in bert_classifiers:
        code, out, err = run_cli(monkeypatch, capsys, "predict", "--model", directory, person, "--device", "cpu")
        assert code == 0, err
        outputs.append(list(csv.reader(io.StringIO(out))))
    torch_rows, onnx_rows = outputs
    assert onnx_rows[0] == torch_rows[0] == ["text", "label", "p_negative", "p_positive"]
    assert len(onnx_rows) == len(torch_rows) == 1 + len(pd.read_csv(person))
    assert [r[:2] for r in onnx_rows] == [r[:2] for r in torch_rows]  # same texts, same labels
    worst = max(abs(float(a) - float(b)) for t, o in zip(torch_rows[1:], onnx_rows[1:]) for a, b in zip(t[2:], o[2:]))
    assert worst <= 2e-6  # printed to 6 decimals


def test_onnx_classifier_card(bert_classifiers):
    torch_dir, onnx_dir = bert_classifiers
    card = (onnx_dir / "README.md").read_text()
    assert "classifier, pruned with headprune (ONNX)" in card and "- Labels: negative, positive" in card
    assert "- Finetuned: F1-macro " in card and "held-out 12 of 60" in card
    assert "| 1 | removed | 0 |" in card
    assert re.search(r"\| ONNX file \(bytes\) \| [\d,]+ \| [\d,]+ \| -\d+\.\d\d% \|", card)
    for runtime, model in [("PyTorch eager", "complete"), ("PyTorch eager", "pruned"),
                           ("onnxruntime", "complete"), ("onnxruntime", "pruned")]:
        assert re.search(rf"\| {runtime} \| {model} \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+x \| [\d.]+x \|", card)
    assert f"headprune predict --model {onnx_dir} my_tweets.csv" in card
    meta = json.loads((onnx_dir / "headprune-onnx.json").read_text())
    assert meta["kind"] == "classifier" and meta["source"] == str(torch_dir)


# ----------------------------------------------------------------------------- a run's model, the card's recipe


def test_cli_export_a_run_model_as_onnx_and_the_card_recipe_runs(tmp_path, monkeypatch, capsys):
    """`headprune export RUN --model MOIH1 --format onnx`, then the card's onnxruntime snippet,
    executed as printed, gives the pruned PyTorch model's output."""
    base = build_tiny_bert(tmp_path / "base")
    write_summary(tmp_path / "run", make_summary(str(base)))
    out = tmp_path / "moih1-onnx"
    code, stdout, err = run_cli(monkeypatch, capsys, "export", tmp_path / "run", "--model", "MOIH1",
                                "--format", "onnx", "--out", out)
    assert code == 0, err
    assert f"saved: {out}" in stdout
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "README.md", "headprune-onnx.json", "tokenizer.json"}
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()
    meta = json.loads((out / "headprune-onnx.json").read_text())
    assert meta["run_model"] == "MOIH1" and sorted(meta["pruned"]) == sorted(CHOSEN_PRUNED["MOIH1"])
    with pytest.raises(HeadpruneError, match="an ONNX export, for inference with onnxruntime only"):
        headprune.load_model(str(out))

    card = (out / "README.md").read_text()
    assert "- Heads pruned: 5 of 8 (62.50%): `0:2;1:*`" in card
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(snippet, scope)  # the card's own code, as a user would paste it
    reference, tokenizer = headprune.load_model(str(base))
    headprune.prune_heads(reference, CHOSEN_PRUNED["MOIH1"])
    batch = tokenizer(["i love this movie"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = reference.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert np.abs(scope["last_hidden_state"] - expected.last_hidden_state.numpy()).max() <= 1e-4


# ----------------------------------------------------------------------------- mistakes


def test_missing_onnxruntime_is_one_line_naming_the_extra(bert_classifiers, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(HeadpruneError) as err:
        require("onnxruntime")
    assert str(err.value) == 'ONNX needs the package onnxruntime, which is not installed: pip install "headprune[onnx]"'
    tweets = tmp_path / "t.txt"
    tweets.write_text("i love it\n")
    code, _, err_text = run_cli(monkeypatch, capsys, "predict", "--model", bert_classifiers[1], tweets)
    assert code == 2 and err_text.count("\n") == 1 and 'pip install "headprune[onnx]"' in err_text, err_text
    code, _, err_text = run_cli(monkeypatch, capsys, "export", bert_classifiers[0], "--format", "onnx",
                                "--out", tmp_path / "x")
    assert code == 2 and err_text.count("\n") == 1 and 'pip install "headprune[onnx]"' in err_text, err_text


def test_export_directory_mistakes(bert_classifiers, tiny_bert_dir, tmp_path):
    torch_dir, onnx_dir = bert_classifiers
    with pytest.raises(HeadpruneError, match="already a PyTorch directory; --format onnx converts it"):
        export_directory(torch_dir, tmp_path / "x", fmt="pytorch")
    with pytest.raises(HeadpruneError, match="already an ONNX export"):
        export_directory(onnx_dir, tmp_path / "x")
    with pytest.raises(HeadpruneError, match="not a run, pruned-model or classifier directory"):
        export_directory(tiny_bert_dir, tmp_path / "x")
    with pytest.raises(HeadpruneError, match="--format: unknown format 'tflite'"):
        export_heads(str(tiny_bert_dir), "0:1", tmp_path / "x", fmt="tflite")
    assert not (tmp_path / "x").exists()


def test_export_refuses_a_graph_that_differs(tiny_bert_dir, tmp_path, monkeypatch):
    """The check after export: an onnxruntime output off by more than TOLERANCE is an error."""
    from headprune import deploy

    real = deploy.OnnxModel.__call__

    def off(self, input_ids, attention_mask):
        out = real(self, input_ids, attention_mask)
        out.last_hidden_state += 10 * TOLERANCE
        return out

    monkeypatch.setattr(deploy.OnnxModel, "__call__", off)
    model, tokenizer = headprune.load_model(str(tiny_bert_dir))
    with pytest.raises(HeadpruneError, match="the ONNX export differs from the PyTorch model by 1.00e-03"):
        save_onnx(model, tokenizer, tmp_path / "bad", "encoder")
