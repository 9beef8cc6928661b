"""Export a pruned model people can use: a chosen model of a run, explicit heads, or a directory.

`--format pytorch` (default) writes a `save_pruned` directory (config + safetensors + tokenizer +
headprune.json): `headprune.load_pruned(DIR)` loads it back, `headprune finetune --model DIR` trains
a classifier on it. `--format onnx` writes a `deploy.save_onnx` directory (model.onnx + tokenizer +
headprune-onnx.json) for onnxruntime; `export_directory` converts a pruned-model directory or a
finetuned classifier (`headprune finetune`) that way. Every export gets a model card `README.md`
(written by `card.model_card`):
what was pruned, parameters and file size against the complete model, the run's scores, and the
inference speed of the pruned and the complete model measured at export (`speed.measure`, batch 1
and batch 32 on this machine's CPU; the complete model is an unpruned twin of the same architecture,
since speed does not depend on the weights)."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

import torch

from .card import SpeedReport, model_card
from .checkpoint import (
    CLASSIFIER_FILE,
    META_FILE,
    file_size,
    is_onnx_dir,
    is_pruned_dir,
    load_pruned,
    save_pruned,
)
from .errors import HeadpruneError
from .heads import HeadSet
from .models import count_parameters, fingerprint, load_model
from .speed import inference_inputs, load_average, measure
from .summary import load_summary
from .surgery import original_shape, prune_heads

FORMATS = ("pytorch", "onnx")
MEASURE_BUDGET_S = 10.0  # the model card's timing: rounds start until then (at least two)
# One thread per runtime for the card: with more, a runtime's threads wait on one another whenever
# other work holds a core (PyTorch's spinning OpenMP threads took up to 50x longer on a busy 2-core
# machine), which would make the comparison say more about the machine than about the model.
CARD_THREADS = 1


def export_model(
    run_dir: str | os.PathLike,
    model_name: str,
    out_dir: str | os.PathLike,
    *,
    base_model: str | None = None,
    fmt: str = "pytorch",
) -> Path:
    """Prune the base model of a run as its chosen model `model_name` (e.g. "MOIH1") and save it to `out_dir`.

    `base_model` overrides the run's model.name (e.g. the same checkpoint in another folder);
    `fmt`: "pytorch" or "onnx"."""
    _check_format(fmt)
    summary = load_summary(run_dir)
    chosen = summary.chosen or {}
    if model_name not in chosen:
        names = ", ".join(chosen) or "none (the run chose no model)"
        raise HeadpruneError(f"unknown model '{model_name}' in {summary.path}: the run's models are {names}")
    base = base_model or summary.model.name
    if not base:
        raise HeadpruneError(f"{summary.path}: no model.name; pass the base model explicitly (--base)")
    model, tokenizer = load_model(base)
    shape = original_shape(model.config)
    expected = (summary.model.n_layers, summary.model.n_heads)
    if shape != expected:
        raise HeadpruneError(
            f"base model '{base}' has {shape[0]} layers x {shape[1]} heads but the run's model has "
            f"{expected[0]} x {expected[1]}"
        )
    heads = list(chosen[model_name].pruned_heads)
    run_fingerprint = summary.model.fingerprint
    base_fingerprint = fingerprint(model) if run_fingerprint else None
    context = {
        "name": model_name,
        "summary": summary,
        "info": chosen[model_name],
        "fingerprint_matches": None if run_fingerprint is None else base_fingerprint == run_fingerprint,
    }
    return _export(model, tokenizer, base, heads, out_dir, context, fmt)


def export_heads(base_model: str, heads, out_dir: str | os.PathLike, fmt: str = "pytorch") -> Path:
    """Prune `heads` of `base_model` and save it to `out_dir` (`fmt`: "pytorch" or "onnx").

    `heads`: {layer: [heads]}, [(layer, head), ...] or a spec such as "0:1,2;3:*" (original coordinates)."""
    _check_format(fmt)
    model, tokenizer = load_model(base_model)
    shape = original_shape(model.config)
    pairs = (HeadSet.parse(heads, *shape) if isinstance(heads, str) else HeadSet(heads)).within(*shape).ordered()
    if not pairs:
        raise HeadpruneError("no head to prune: give at least one LAYER:HEADS pair (e.g. --prune '0:1,2;3:*')")
    return _export(model, tokenizer, base_model, pairs, out_dir, None, fmt)


def export_directory(model_dir: str | os.PathLike, out_dir: str | os.PathLike, fmt: str = "onnx") -> Path:
    """Convert a pruned-model directory (`headprune export`) or a classifier directory (`headprune
    finetune`) to `fmt` ("onnx"; both already are PyTorch directories)."""
    _check_format(fmt)
    source = Path(model_dir)
    if fmt == "pytorch":
        raise HeadpruneError(f"{source}: already a PyTorch directory; --format onnx converts it to ONNX")
    if is_onnx_dir(source):
        raise HeadpruneError(f"{source}: already an ONNX export")
    if not is_pruned_dir(source):
        raise HeadpruneError(
            f"{source}: not a run, pruned-model or classifier directory (no summary.json, {META_FILE} or "
            f"{CLASSIFIER_FILE})"
        )
    meta = json.loads((source / META_FILE).read_text())
    model, tokenizer = load_pruned(source)
    extra = {"base_model": meta.get("base_model", str(source)), "source": str(source)}
    kind, labels = "encoder", None
    if (source / CLASSIFIER_FILE).is_file():
        classifier = json.loads((source / CLASSIFIER_FILE).read_text(encoding="utf-8"))
        kind, labels = "classifier", list(classifier["labels"])
        extra.update(labels=labels, base_model=classifier.get("base", extra["base_model"]),
                     metrics=classifier.get("metrics", {}))
    twin = complete_twin(model)
    complete = {"n_params": count_parameters(twin), "size_bytes": file_size(twin)}
    return _write(model, tokenizer, extra, Path(out_dir), "onnx", kind, complete, None, twin)


def _check_format(fmt: str) -> None:
    """An unknown format, or ONNX without its extra, fails before any model is loaded."""
    if fmt not in FORMATS:
        raise HeadpruneError(f"--format: unknown format '{fmt}' (use {' or '.join(FORMATS)})")
    if fmt == "onnx":
        from .deploy import require_export

        require_export()


def _export(model, tokenizer, base: str, heads, out_dir, context: dict | None, fmt: str) -> Path:
    # Measured on the model just loaded, as the file the export writes (the pooler it carries included),
    # so that "vs complete" compares like with like.
    complete = {"n_params": count_parameters(model), "size_bytes": file_size(model)}
    if heads:
        prune_heads(model, heads)
    extra = {"base_model": base}
    if context is not None:
        extra.update(run=str(context["summary"].path), run_model=context["name"])
    return _write(model, tokenizer, extra, Path(out_dir), fmt, "encoder", complete, context, complete_twin(model))


def _write(model, tokenizer, extra: dict, out: Path, fmt: str, kind: str, complete: dict, context, twin) -> Path:
    """Save `model` as `fmt`, time it against its complete `twin`, write the model card."""
    from .deploy import ONNX_FILE, OnnxModel, export_onnx, graph_of, save_onnx

    if out.exists() and not out.is_dir():
        raise HeadpruneError(f"--out {out}: exists and is not a directory")
    numbers = {"n_params": count_parameters(model)}
    forwards = {("PyTorch eager", "complete"): graph_of(twin, kind), ("PyTorch eager", "pruned"): graph_of(model, kind)}
    if fmt == "pytorch":
        save_pruned(model, tokenizer, out, extra=extra)
        numbers["size_bytes"] = (out / "model.safetensors").stat().st_size
    else:
        save_onnx(model, tokenizer, out, kind, extra=extra)
        numbers["onnx_bytes"] = (out / ONNX_FILE).stat().st_size
        output = graph_of(model, kind).output
        with tempfile.TemporaryDirectory() as tmp:
            # The session holds the whole graph (weights inside the file), so the file can go.
            complete_onnx = export_onnx(twin, tokenizer, Path(tmp) / ONNX_FILE, kind)
            complete["onnx_bytes"] = complete_onnx.stat().st_size
            forwards["onnxruntime", "complete"] = OnnxModel(complete_onnx, twin.config, output, threads=CARD_THREADS)
        forwards["onnxruntime", "pruned"] = OnnxModel(out / ONNX_FILE, model.config, output, threads=CARD_THREADS)
    single, batch = inference_inputs(tokenizer, model.config)
    threads = torch.get_num_threads()
    torch.set_num_threads(CARD_THREADS)
    try:
        load_before = load_average()
        speeds = measure(forwards, single, batch, budget_s=MEASURE_BUDGET_S)
        load_after = load_average()
    finally:
        torch.set_num_threads(threads)
    report = SpeedReport(
        rows=[(runtime, name, speeds[runtime, name]) for runtime, name in forwards],
        single_tokens=int(single[0].shape[1]),
        batch_tokens=int(batch[0].shape[1]),
        threads=CARD_THREADS,
        load=(load_before, load_after),
    )
    card = model_card(
        model, extra["base_model"], numbers, complete, context, out, fmt=fmt, kind=kind, speed=report,
        labels=extra.get("labels"), metrics=extra.get("metrics"),
    )
    (out / "README.md").write_text(card, encoding="utf-8")
    return out


def complete_twin(model) -> torch.nn.Module:
    """The unpruned model of the same architecture, with random weights (the global RNG untouched):
    what the complete model costs to run and to store (with the pooler the model carries)."""
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = original_shape(config)[0]
    for attr in ("headprune_kept", "headprune_original_layers"):
        if hasattr(config, attr):
            delattr(config, attr)
    with torch.random.fork_rng(devices=[]):
        twin = type(model)(config).eval()
    twin.headprune_pooler_state = getattr(model, "headprune_pooler_state", None) or {}
    return twin
