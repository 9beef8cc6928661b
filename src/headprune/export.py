"""Export a pruned model people can use: a chosen model of a run, explicit heads, or a directory.

`--format pytorch` (default) writes a `save_pruned` directory (config + safetensors + tokenizer +
headprune.json): `headprune.load_pruned(DIR)` loads it back, `headprune finetune --model DIR` trains
a classifier on it. `--format onnx` writes a `deploy.save_onnx` directory (model.onnx + tokenizer +
headprune-onnx.json) for onnxruntime; `export_directory` converts a pruned-model directory or a
finetuned classifier (`headprune finetune`) that way. Every export gets a model card `README.md`:
what was pruned, parameters and file size against the complete model, the run's scores, and the
inference speed of the pruned and the complete model measured at export (`speed.measure`, batch 1
and batch 32 on this machine's CPU; the complete model is an unpruned twin of the same architecture,
since speed does not depend on the weights)."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch

from .checkpoint import (
    CLASSIFIER_FILE,
    META_FILE,
    MODELING_FILE,
    file_size,
    is_onnx_dir,
    is_pruned_dir,
    load_pruned,
    save_pruned,
)
from .errors import HeadpruneError
from .generalize import statement
from .heads import HeadSet
from .models import count_parameters, fingerprint, load_model
from .speed import Speed, inference_inputs, load_average, measure
from .summary import COMPLETE, DatasetScores, load_summary
from .surgery import kept_heads, original_shape, prune_heads, pruned_heads

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


@dataclass
class SpeedReport:
    """The timings a model card quotes: (runtime, model, Speed) rows and the token counts timed."""

    rows: list[tuple[str, str, Speed]]
    single_tokens: int
    batch_tokens: int
    threads: int
    load: tuple[float | None, float | None]  # the 1-minute load average before and after

    def speed(self, runtime: str, model: str) -> Speed | None:
        return next((s for r, m, s in self.rows if (r, m) == (runtime, model)), None)

    def lines(self) -> list[str]:
        reference = self.speed("PyTorch eager", "complete")
        cores = os.cpu_count() or 1
        busy = [x for x in self.load if x is not None and x > 0.5 * cores]
        lines = [
            "",
            "## Inference speed (measured at export)",
            "",
            f"CPU ({cores} cores), {self.threads} thread{'s' if self.threads != 1 else ''} per runtime (steady "
            "on a machine doing other work too), "
            f"{date.today().isoformat()}: batch 1 is one tweet ({self.single_tokens} tokens), batch "
            f"{reference.batch_size} is {reference.batch_size} tweets padded to {self.batch_tokens} tokens; medians of "
            f"{reference.latency_samples} and {reference.throughput_samples} calls, the rows measured in turns. "
            "A quick measurement on the machine that exported the model; the complete model is the same "
            "architecture unpruned (speed does not depend on the weights).",
        ]
        if busy:
            lines[-1] += (
                f" Caution: the machine was busy (load average {max(busy):.1f} on {cores} cores): measure again "
                "on a quiet machine for absolute numbers."
            )
        lines += [
            "",
            f"| Runtime | Model | Batch 1 p50 (ms) | Batch 1 p95 (ms) | Batch {reference.batch_size} (tweets/s) "
            "| Speed-up batch 1 | Speed-up batch 32 |",
            "|:---|:---|---:|---:|---:|---:|---:|",
        ]
        for runtime, model, s in self.rows:
            lines.append(
                f"| {runtime} | {model} | {s.p50_ms:.2f} | {s.p95_ms:.2f} | {s.per_second:.1f} | "
                f"{reference.p50_ms / s.p50_ms:.2f}x | {s.per_second / reference.per_second:.2f}x |"
            )
        lines += ["", "Speed-ups are against the complete model in PyTorch eager (p50 latency, throughput)."]
        pruned, complete = self.speed("onnxruntime", "pruned"), self.speed("onnxruntime", "complete")
        if pruned and complete:
            lines[-1] += (
                f" Within onnxruntime, pruning alone: {complete.p50_ms / pruned.p50_ms:.2f}x at batch 1, "
                f"{pruned.per_second / complete.per_second:.2f}x at batch {pruned.batch_size}."
            )
        return lines


def model_card(
    model,
    base: str,
    numbers: dict,
    complete: dict,
    context: dict | None,
    out: Path,
    *,
    fmt: str = "pytorch",
    kind: str = "encoder",
    speed: SpeedReport | None = None,
    labels: list[str] | None = None,
    metrics: dict | None = None,
) -> str:
    """The exported model's README.md: what was pruned, how big and fast it is, what the run
    measured, how to load it."""
    n_layers, n_heads = original_shape(model.config)
    kept = kept_heads(model)
    pruned = pruned_heads(model)
    total = n_layers * n_heads
    removed = [layer for layer in range(n_layers) if layer not in kept]
    spec = HeadSet(pruned).spec(n_heads)
    prefix = f"{context['name']}: " if context else ""
    what = "classifier" if kind == "classifier" else "encoder"
    title = Path(str(base)).name if Path(str(base)).is_dir() else base
    lines = [f"# {prefix}{title}{' classifier' if kind == 'classifier' else ''}, pruned with headprune"
             + (" (ONNX)" if fmt == "onnx" else ""), ""]
    lines += [
        f"- Base model: `{base}`",
        f"- Heads pruned: {len(pruned)} of {total} ({100 * len(pruned) / total:.2f}%): `{spec or '-'}`",
        f"- Layers removed (every head pruned): {', '.join(map(str, removed)) or 'none'}",
        f"- Layers kept: {len(kept)} of {n_layers}",
    ]
    if fmt == "onnx":
        lines.append(f"- Format: ONNX ({what}), `model.onnx` with the tokenizer files beside it")
    if labels:
        lines.append(f"- Labels: {', '.join(labels)}")
    if metrics and "f1_macro" in metrics:
        lines.append(f"- Finetuned: F1-macro {metrics['f1_macro']:.4f} on {metrics.get('eval', 'its evaluation set')}")
    if context is not None:
        info = context["info"]
        strategy = info.strategy
        lines.append(
            f"- From run: `{context['summary'].path}`, model `{context['name']}`"
            + (f" (strategy {strategy}, order {info.order})" if strategy else " (complete model)")
        )
        if context["fingerprint_matches"] is False:
            lines.append(
                "- Note: the base model loaded now differs from the run's model (fingerprint mismatch); "
                "the run's numbers below were measured on the run's model."
            )
    lines += ["", "## Heads kept per layer", "", "| Layer | Heads kept | Count |", "|---:|:---|---:|"]
    for layer in range(n_layers):
        hs = kept.get(layer)
        lines.append(f"| {layer} | {', '.join(map(str, hs))} | {len(hs)} |" if hs else f"| {layer} | removed | 0 |")
    lines += ["", "## Size", "", "| | Pruned | Complete | vs complete |", "|:---|---:|---:|---:|"]
    rows = (("Parameters", "n_params"), ("Saved size (bytes)", "size_bytes"), ("ONNX file (bytes)", "onnx_bytes"))
    for label, key in rows:
        if key not in numbers:
            continue
        value, ref = numbers[key], complete.get(key)
        pct = f"{100 * (value / ref - 1):+.2f}%" if ref else "n/a"
        lines.append(f"| {label} | {value:,} | {f'{ref:,}' if ref else 'n/a'} | {pct} |")
    if speed is not None:
        lines += speed.lines()
    if context is not None:
        lines += _run_numbers(context)
    lines += _use_it(model, out, fmt, kind)
    return "\n".join(lines)


def _use_it(model, out: Path, fmt: str, kind: str) -> list[str]:
    """How to load the export: headprune, plain transformers where it can, onnxruntime."""
    lines = ["", "## Use it", ""]
    if fmt == "onnx":
        output = "logits" if kind == "classifier" else "last_hidden_state"
        lines += [
            "With headprune: " + (
                f"`headprune predict --model {out} my_tweets.csv > labels.csv` (the same CSV as with the "
                "PyTorch classifier)."
                if kind == "classifier" else
                f'`headprune.deploy.load_onnx("{out}")` gives (model, tokenizer, metadata); the model is called '
                "like the PyTorch one."
            ),
            "",
            "With onnxruntime alone (`pip install onnxruntime transformers`); preprocess tweets as headprune "
            "does (URLs -> `someurl`, mentions -> `someuser`, lowercase):",
            "",
            *_onnxruntime_code(out, output),
            "",
            f"Inputs: int64 `input_ids` and `attention_mask` of shape (batch, sequence), any batch size and length; "
            f"output `{output}`"
            + (" (batch, labels): softmax gives the probabilities." if kind == "classifier"
               else " (batch, sequence, hidden)."),
            "",
        ]
        return lines
    lines += _load_it(out, model)
    lines += [
        "Finetune a classifier on your own labelled tweets, then label new ones:",
        "",
        "```sh",
        f"headprune finetune --model {out} --train my.csv --out my-classifier",
        "headprune predict --model my-classifier my_tweets.csv > labels.csv",
        "```",
        "",
    ]
    return lines


def _load_it(out: Path, model) -> list[str]:
    """The three ways to load a PyTorch export (plain transformers, after `import headprune`, ONNX),
    each as code that runs, from the config.json written into `out`."""
    config = json.loads((out / "config.json").read_text())
    remote = "auto_map" in config
    refused = config["model_type"] != model.config.model_type and not remote
    if refused:
        return [
            "transformers alone cannot hold a different number of heads per layer in this model family, so "
            f"`config.json` names the model type `{config['model_type']}`: a plain `AutoModel.from_pretrained` "
            "refuses this directory instead of loading random weights into the pruned layers. Load it with "
            f'`model, tokenizer = headprune.load_pruned("{out}")`, or outside headprune export it to ONNX: '
            f"`headprune export {out} --format onnx --out {out}-onnx`.",
            "",
        ]
    trust = ", trust_remote_code=True" if remote else ""
    pooler = (
        "with the checkpoint's pooler" if config.get("headprune_pooler")
        else "no pooler (the checkpoint has none; a classifier that pools starts one fresh with its head)"
    )
    fresh = " (freshly initialised: the checkpoint has none)" if config.get("headprune_fresh_mlm_head") else ""
    lines = [
        "The directory is a transformers model. `AutoModel` gives the encoder, " + pooler + ", and leaves out "
        f"the masked-LM head; `AutoModelForMaskedLM` has that head{fresh}; "
        "`AutoModelForSequenceClassification` adds a fresh classification head to finetune (with `Trainer`, "
        "for instance).",
        "",
        "### With transformers alone (`pip install torch transformers`)",
        "",
        "```python",
        "import torch",
        "from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{out}")',
        f'encoder = AutoModel.from_pretrained("{out}"{trust})',
        'batch = tokenizer(["i love this movie", "i hate mondays someurl"], padding=True, return_tensors="pt")',
        "with torch.no_grad():",
        "    hidden = encoder(**batch).last_hidden_state",
        f'classifier = AutoModelForSequenceClassification.from_pretrained("{out}", num_labels=2{trust})',
        "```",
        "",
    ]
    if remote:
        n_lines = len((out / MODELING_FILE).read_text(encoding="utf-8").splitlines())
        lines += [
            "Each layer keeps its own number of heads, which transformers' BERT-family classes cannot express "
            f"alone. `trust_remote_code=True` lets transformers import `{MODELING_FILE}` from this directory: "
            f"{n_lines} lines that headprune copied from the template in its package, importing only torch and "
            "transformers. Its classes are transformers' own classes of this family, which shrink each attention "
            "layer to the heads `config.json` lists (`headprune_kept`) before the weights load; forward passes, "
            "`save_pretrained`, `Trainer` and `pipeline` are transformers' own. Read the file before you trust it: "
            "it is the only code in the directory.",
            "",
        ]
    else:
        lines += ["Only whole layers were removed: plain transformers loads it exactly, with no code from here.", ""]
    lines += [
        "### With headprune installed",
        "",
        "```python",
        "import headprune",
        "from transformers import AutoModel",
        "",
        f'encoder = AutoModel.from_pretrained("{out}")'
        + ("  # no trust_remote_code: `import headprune` registered the same classes" if remote else ""),
        f'model, tokenizer = headprune.load_pruned("{out}")  # masked-LM model with the heads above removed',
        "```",
        "",
        "### ONNX (onnxruntime, no PyTorch)",
        "",
        "```sh",
        f"headprune export {out} --format onnx --out {out}-onnx",
        "```",
        "",
        *_onnxruntime_code(Path(f"{out}-onnx"), "last_hidden_state"),
        "",
    ]
    return lines


def _onnxruntime_code(out: Path, output: str) -> list[str]:
    """A Python block that runs the ONNX directory `out` with onnxruntime alone."""
    return [
        "```python",
        "import onnxruntime",
        "from transformers import AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{out}")',
        f'session = onnxruntime.InferenceSession("{out}/model.onnx")',
        'batch = tokenizer(["i love this movie"], padding=True, truncation=True, max_length=128, '
        'return_tensors="np")',
        f"({output},) = session.run(None, {{\"input_ids\": batch[\"input_ids\"], "
        f"\"attention_mask\": batch[\"attention_mask\"]}})",
        "```",
    ]


def _run_numbers(context: dict) -> list[str]:
    """Mean F1-macro of this model per generalization dataset vs the complete model, with significant t-tests."""
    generalization = context["summary"].generalization
    if generalization is None:
        return []
    name = context["name"]
    own, cm = generalization.models.get(name) or {}, generalization.models.get(COMPLETE) or {}
    datasets = list(own)
    if not datasets:
        return []
    lines = [
        "",
        "## Results of the run (generalization check, F1-macro x100, mean (std) over seeds)",
        "",
        f"| Dataset | {name} | CM | vs CM | t-test (p < 0.05) |",
        "|:---|---:|---:|---:|:---|",
    ]
    for ds in datasets:
        v, ref = own[ds], cm.get(ds)
        pct = v.pct_vs_cm
        tests = [
            statement(s.to_json())
            for s in generalization.significance
            if s.dataset == ds and name in (s.better, s.worse) and COMPLETE in (s.better, s.worse)
        ]
        lines.append(
            f"| {ds} | {_mean_std(v)} | {_mean_std(ref) if ref else 'n/a'} | "
            f"{'n/a' if pct is None or name == COMPLETE else f'{float(pct):+.2f}%'} | {'; '.join(tests) or '-'} |"
        )
    return lines


def _mean_std(value: DatasetScores) -> str:
    return f"{100 * float(value.mean):.2f} ({100 * float(value.std):.2f})"
