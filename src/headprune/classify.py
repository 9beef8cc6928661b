"""Finetune a sequence classifier on a (pruned) encoder, save it, load it back, and label new texts.

The encoder comes from `headprune.load_model` (hub id, local dir, `minilm`, or a pruned dir written
by `save_pruned`/`headprune export`); the classifier keeps exactly its pruned structure and adds a
fresh classification head. A classifier directory is a `save_pruned` directory plus
`headprune-classifier.json` (labels, pruned heads, base, training metrics). `load_classifier` also
loads its ONNX export (`headprune export CLF --format onnx`), which `predict` then runs with
onnxruntime (`deploy.OnnxModel`)."""

from __future__ import annotations

import copy
import csv
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from safetensors import SafetensorError

from .checkpoint import CLASSIFIER_FILE, is_onnx_dir, load_pruned, save_pruned
from .data import Dataset, preprocess
from .devices import resolve_device
from .errors import HeadpruneError, parse_user_file
from .models import count_parameters, load_model, max_length
from .scoring import encode, pad_batch
from .surgery import original_shape, prune_heads, pruned_heads
from .tables import decode, read_lines, read_rows

HELD_OUT = 0.2  # share of train scored when no eval set is given


@dataclass
class Classifier:
    """A loaded classifier: the model (eval mode; or a `deploy.OnnxModel`), its tokenizer and its
    labels (index -> name)."""

    model: torch.nn.Module
    tokenizer: object
    labels: list[str]
    meta: dict = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# ----------------------------------------------------------------------------- building


def build_classifier(mlm_model, labels: list[str], seed: int = 1):
    """A sequence classifier with the encoder (and pruned structure) of `mlm_model` and a fresh head.

    The class is the family's AutoModelForSequenceClassification class for the same config; the same
    heads are pruned, then the encoder weights are copied from the masked-LM model's base model."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(mlm_model.config)
    n_layers, _ = original_shape(config)
    config.num_hidden_layers = n_layers
    for attr in ("headprune_kept", "headprune_original_layers", "headprune_fresh_mlm_head"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.problem_type = "single_label_classification"
    torch.manual_seed(seed)  # the fresh classification head (and pooler) start from the seed
    model = AutoModelForSequenceClassification.from_config(config)
    pruned = pruned_heads(mlm_model)
    if pruned:
        prune_heads(model, pruned)
    missing, unexpected = model.base_model.load_state_dict(mlm_model.base_model.state_dict(), strict=False)
    missing = [k for k in missing if not k.startswith("pooler.") and not k.endswith("position_ids")]
    if missing or unexpected:
        raise HeadpruneError(
            f"cannot copy the encoder into a classifier ({len(missing)} missing, {len(unexpected)} unexpected "
            f"weights, e.g. {(missing + unexpected)[0]})"
        )
    return model


# ----------------------------------------------------------------------------- training


def finetune(
    model_dir_or_id: str,
    train: Dataset,
    eval: Dataset | None,
    out_dir: str | os.PathLike,
    epochs: int = 4,
    lr: float = 2e-5,
    batch_size: int = 16,
    seed: int = 1,
    device: str = "auto",
) -> dict:
    """Finetune a classifier on `train` (AdamW, eps 1e-8, linear decay), score F1-macro, save it to `out_dir`.

    With `eval=None`, a seeded stratified 20% of `train` is held out and scored. Returns
    {"f1_macro", "seconds" (training time), "n_train", "n_eval", "eval", "labels", "out_dir", ...}."""
    from sklearn.metrics import f1_score
    from transformers import get_linear_schedule_with_warmup

    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise HeadpruneError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if not lr > 0:
        raise HeadpruneError(f"--lr must be positive, got {lr}")
    target = resolve_device(device)
    labels = list(train.classes)
    train_set, eval_set, eval_name = _split(train, eval, seed)
    _seed_everything(seed)
    mlm, tokenizer = load_model(model_dir_or_id)
    model = build_classifier(mlm, labels, seed=seed).to(target)
    del mlm
    limit = max_length(tokenizer, model.config)
    train_ids = encode(tokenizer, train_set[0], limit)
    y = torch.tensor(train_set[1], dtype=torch.long)

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, eps=1e-8, weight_decay=0.0)
    steps_per_epoch = (len(train_ids) + batch_size - 1) // batch_size
    schedule = get_linear_schedule_with_warmup(optimizer, 0, steps_per_epoch * epochs)
    generator = torch.Generator().manual_seed(seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    started = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(train_ids), generator=generator).split(batch_size):
            input_ids, attention = pad_batch([train_ids[i] for i in batch.tolist()], pad_id)
            out = model(input_ids=input_ids.to(target), attention_mask=attention.to(target), labels=y[batch].to(target))
            out.loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
    if target.type == "cuda":
        torch.cuda.synchronize(target)
    seconds = time.perf_counter() - started
    model.eval()

    classifier = Classifier(model=model, tokenizer=tokenizer, labels=labels, device=target)
    probabilities = _probabilities(classifier, eval_set[0], batch_size=max(batch_size, 32))
    f1 = float(f1_score(eval_set[1], probabilities.argmax(axis=1), average="macro"))
    result = {
        "f1_macro": f1,
        "seconds": seconds,
        "n_train": len(train_ids),
        "n_eval": len(eval_set[0]),
        "eval": eval_name,
        "labels": labels,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "device": str(target),
        "n_params": count_parameters(model),
        "n_pruned_heads": len(pruned_heads(model)),
        "out_dir": str(out_dir),
    }
    save_classifier(classifier, out_dir, base=model_dir_or_id, metrics=result)
    return result


def _split(train: Dataset, eval: Dataset | None, seed: int):
    """((texts, labels) to train on, (texts, labels) to score, a description of the scored set)."""
    from sklearn.model_selection import train_test_split

    if eval is not None:
        unknown = sorted(set(eval.classes) - set(train.classes))
        if unknown:
            raise HeadpruneError(
                f"{eval.source or eval.name}: label(s) not in the training data ({train.source or train.name}): "
                f"{', '.join(unknown)}"
            )
        index = {c: i for i, c in enumerate(train.classes)}
        eval_labels = np.array([index[eval.classes[i]] for i in eval.labels], dtype=np.int64)
        return (train.texts, train.labels), (eval.texts, eval_labels), eval.source or eval.name
    counts = train.class_counts()
    too_few = {c: n for c, n in counts.items() if n < 2}
    if too_few:
        raise HeadpruneError(
            f"{train.source or train.name}: class(es) {', '.join(too_few)} have fewer than 2 examples; "
            "a held-out split needs at least 2 per class (or give --eval)"
        )
    indices = np.arange(len(train))
    n_eval = max(round(HELD_OUT * len(train)), len(counts))
    fit, held = train_test_split(indices, test_size=n_eval, stratify=train.labels, random_state=seed, shuffle=True)
    fit, held = np.sort(fit), np.sort(held)
    return (
        ([train.texts[i] for i in fit], train.labels[fit]),
        ([train.texts[i] for i in held], train.labels[held]),
        f"held-out {len(held)} of {len(train)} training rows (stratified, seed {seed})",
    )


# ----------------------------------------------------------------------------- saving and loading


def save_classifier(classifier: Classifier, out_dir: str | os.PathLike, base: str, metrics: dict | None = None) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise HeadpruneError(f"--out {out}: exists and is not a directory")
    save_pruned(classifier.model, classifier.tokenizer, out, extra={"base_model": base})
    meta = {
        "format": "headprune-classifier/1",
        "labels": classifier.labels,
        "pruned_heads": [list(p) for p in pruned_heads(classifier.model)],
        "base": base,
        "metrics": {k: v for k, v in (metrics or {}).items() if k != "out_dir"},
    }
    (out / CLASSIFIER_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def load_classifier(directory: str | os.PathLike, device: str = "cpu") -> Classifier:
    """Load a directory written by `finetune` (config, safetensors, tokenizer, headprune-classifier.json),
    or its ONNX export (run with onnxruntime).

    A directory that is not a classifier, or one whose files are missing or damaged, is one error line
    (predicting with the wrong labels, or a traceback from deep in transformers, helps nobody)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise HeadpruneError(f"--model {directory}: no such classifier directory")
    if is_onnx_dir(directory):
        return _load_onnx_classifier(directory, device)
    meta_path = directory / CLASSIFIER_FILE
    if not meta_path.is_file():
        raise HeadpruneError(
            f"{directory}: not a classifier directory (no {CLASSIFIER_FILE}; make one with `headprune finetune`)"
        )
    meta = _classifier_meta(meta_path)
    for required in ("config.json", "model.safetensors", "headprune.json"):
        if not (directory / required).is_file():
            raise HeadpruneError(
                f"{directory}: incomplete classifier directory (no {required}); "
                "write it again with `headprune finetune`"
            )
    try:
        model, tokenizer = load_pruned(directory)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:  # damaged or mismatched files
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise HeadpruneError(f"{directory}: damaged classifier directory ({type(err).__name__}: {detail})") from None
    if tokenizer is None:
        raise HeadpruneError(f"{directory}: incomplete classifier directory (no tokenizer_config.json)")
    n_outputs = getattr(model.config, "num_labels", None)
    if n_outputs != len(meta["labels"]):
        raise HeadpruneError(
            f"{meta_path}: lists {len(meta['labels'])} labels, the model in {directory} has {n_outputs} outputs"
        )
    target = resolve_device(device)
    return Classifier(
        model=model.to(target).eval(), tokenizer=tokenizer, labels=list(meta["labels"]), meta=meta, device=target
    )


def _classifier_meta(path: Path) -> dict:
    meta = parse_user_file(path, json.loads, str(path))
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(label, str) for label in labels):
        raise HeadpruneError(f"{path}: 'labels' must be a list of at least two label names")
    return meta


def _load_onnx_classifier(directory: Path, device: str) -> Classifier:
    from .deploy import load_onnx

    model, tokenizer, meta = load_onnx(directory, device=device)
    if meta.get("kind") != "classifier":
        raise HeadpruneError(
            f"{directory}: an ONNX encoder, not a classifier (export a `headprune finetune` directory to ONNX)"
        )
    # onnxruntime takes and returns host arrays, whatever provider runs the graph.
    return Classifier(model=model, tokenizer=tokenizer, labels=list(meta["labels"]), meta=meta)


# ----------------------------------------------------------------------------- predicting


def predict(classifier: Classifier, texts: list[str], batch_size: int = 32) -> tuple[list[str], np.ndarray]:
    """Label raw texts (preprocessed here): (labels, probabilities of shape (n_texts, n_labels))."""
    probabilities = _probabilities(classifier, [preprocess(str(t)) for t in texts], batch_size)
    return [classifier.labels[i] for i in probabilities.argmax(axis=1)], probabilities


def _probabilities(classifier: Classifier, texts: list[str], batch_size: int) -> np.ndarray:
    if not texts:
        return np.zeros((0, len(classifier.labels)), dtype=np.float32)
    model, tokenizer = classifier.model, classifier.tokenizer
    limit = max_length(tokenizer, model.config)
    ids = encode(tokenizer, texts, limit)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    with torch.no_grad():
        for start in range(0, len(ids), batch_size):
            input_ids, attention = pad_batch(ids[start : start + batch_size], pad_id)
            logits = model(
                input_ids=input_ids.to(classifier.device), attention_mask=attention.to(classifier.device)
            ).logits
            out.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
    return np.concatenate(out)


# ----------------------------------------------------------------------------- reading texts


def read_texts(source: str, text_column: str = "tweet", fmt: str = "auto") -> list[str]:
    """Texts to label from a CSV/TSV/JSONL file (column `text_column`) or plain lines; `-` reads standard input.

    `fmt`: auto (by suffix; on standard input: JSON lines if the first line is a JSON object, CSV/TSV
    if the first line has a `text_column` field, else one text per line), csv, tsv, jsonl, lines.
    Files are read by `tables.read_rows`, so a malformed row is one error line naming its line."""
    formats = ("auto", "csv", "tsv", "jsonl", "lines")
    if fmt not in formats:
        raise HeadpruneError(f"--format: unknown format '{fmt}' (use {', '.join(formats)})")
    name = "standard input" if source == "-" else source
    if source == "-":
        raw = sys.stdin.buffer.read()
    else:
        path = Path(source)
        if not path.is_file():
            raise HeadpruneError(f"{source}: file not found")
        raw = path.read_bytes()
        if fmt == "auto":
            fmt = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(
                path.suffix.lower(), "lines"
            )
    text = decode(raw)
    if not text.strip():
        raise HeadpruneError(f"{name}: no text to label")
    if fmt == "auto":
        fmt = _sniff(text, text_column)
    if fmt == "lines":
        return [line for _, line in read_lines(text, name)]
    return [values[0] for _, values in read_rows(text, name, fmt, {text_column: "--text-column"})]


def write_predictions(out: TextIO, texts: list[str], labels: list[str], probabilities: np.ndarray,
                      classes: list[str]) -> None:
    """CSV `text,label,p_<class>...` that reads back (csv module, pandas) to exactly `texts`.

    The csv module quotes a value holding the delimiter, a quote or a `\n`, but not one holding a
    lone `\r`, which readers take for a line end: such rows are written with every value quoted."""
    plain = csv.writer(out, lineterminator="\n")
    quoted = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
    plain.writerow(["text", "label"] + [f"p_{c}" for c in classes])
    for text, label, row in zip(texts, labels, probabilities):
        values = [text, label] + [f"{p:.6f}" for p in row]
        (quoted if any("\r" in v for v in values) else plain).writerow(values)


def _sniff(text: str, text_column: str) -> str:
    first = text.lstrip().splitlines()[0]
    if first.startswith("{"):
        try:
            if isinstance(json.loads(first), dict):
                return "jsonl"
        except json.JSONDecodeError:
            pass
    for fmt, sep in (("tsv", "\t"), ("csv", ",")):
        if text_column in [field.strip().strip('"') for field in first.split(sep)]:
            return fmt
    return "lines"
