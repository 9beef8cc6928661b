"""The model card: the `README.md` of an exported model (`export.py` writes it): what was pruned,
parameters and file size against the complete model, the run's scores, the inference speed measured
at export (`SpeedReport`), and how to load and run it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from .checkpoint import MODELING_FILE
from .generalize import statement
from .heads import HeadSet
from .speed import Speed
from .summary import COMPLETE, DatasetScores
from .surgery import kept_heads, original_shape, pruned_heads


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


__all__ = ["SpeedReport", "model_card"]
