"""Export a pruned model people can use: a chosen model of a run, or an explicit head list.

The result is a `save_pruned` directory (config + safetensors + tokenizer + headprune.json) with a
model card `README.md`; `headprune.load_pruned(DIR)` loads it back, `headprune finetune --model DIR`
trains a classifier on it."""

from __future__ import annotations

import os
from pathlib import Path

from .checkpoint import save_pruned, saved_size
from .errors import HeadpruneError
from .generalize import statement
from .models import count_parameters, fingerprint, load_model
from .summary import COMPLETE, DatasetScores, load_summary
from .surgery import (
    format_head_spec,
    kept_heads,
    normalize_heads,
    original_shape,
    parse_head_spec,
    prune_heads,
    pruned_heads,
)


def export_model(
    run_dir: str | os.PathLike,
    model_name: str,
    out_dir: str | os.PathLike,
    *,
    base_model: str | None = None,
) -> Path:
    """Prune the base model of a run as its chosen model `model_name` (e.g. "MOIH1") and save it to `out_dir`.

    `base_model` overrides the run's model.name (e.g. the same checkpoint in another folder)."""
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
    return _export(model, tokenizer, base, heads, out_dir, context)


def export_heads(base_model: str, heads, out_dir: str | os.PathLike) -> Path:
    """Prune `heads` of `base_model` and save it to `out_dir`.

    `heads`: {layer: [heads]}, [(layer, head), ...] or a spec such as "0:1,2;3:*" (original coordinates)."""
    model, tokenizer = load_model(base_model)
    if isinstance(heads, str):
        heads = parse_head_spec(heads, *original_shape(model.config))
    pairs = [(layer, h) for layer, hs in normalize_heads(heads, model.config).items() for h in hs]
    if not pairs:
        raise HeadpruneError("no head to prune: give at least one LAYER:HEADS pair (e.g. --prune '0:1,2;3:*')")
    return _export(model, tokenizer, base_model, pairs, out_dir, None)


def _export(model, tokenizer, base: str, heads, out_dir, context: dict | None) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise HeadpruneError(f"--out {out}: exists and is not a directory")
    # Measured on the model just loaded, as every score measures `size_bytes`, so that "vs complete"
    # compares like with like (up to the metadata bytes naming tied weights the file drops).
    complete = {"n_params": count_parameters(model), "size_bytes": saved_size(model)}
    if heads:
        prune_heads(model, heads)
    extra = {"base_model": base}
    if context is not None:
        extra.update(run=str(context["summary"].path), run_model=context["name"])
    save_pruned(model, tokenizer, out, extra=extra)
    numbers = {"n_params": count_parameters(model), "size_bytes": (out / "model.safetensors").stat().st_size}
    (out / "README.md").write_text(model_card(model, base, numbers, complete, context, out), encoding="utf-8")
    return out


def model_card(model, base: str, numbers: dict, complete: dict, context: dict | None, out: Path) -> str:
    """The exported model's README.md: what was pruned, how big it is, what the run measured, how to load it."""
    n_layers, n_heads = original_shape(model.config)
    kept = kept_heads(model)
    pruned = pruned_heads(model)
    total = n_layers * n_heads
    removed = [layer for layer in range(n_layers) if layer not in kept]
    spec = format_head_spec(_as_set(pruned), n_heads)
    prefix = f"{context['name']}: " if context else ""
    lines = [f"# {prefix}{Path(str(base)).name if Path(str(base)).is_dir() else base}, pruned with headprune", ""]
    lines += [
        f"- Base model: `{base}`",
        f"- Heads pruned: {len(pruned)} of {total} ({100 * len(pruned) / total:.2f}%): `{spec or '-'}`",
        f"- Layers removed (every head pruned): {', '.join(map(str, removed)) or 'none'}",
        f"- Layers kept: {len(kept)} of {n_layers}",
    ]
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
    for label, key, fmt in (("Parameters", "n_params", "{:,}"), ("Saved size (bytes)", "size_bytes", "{:,}")):
        value, ref = numbers[key], complete.get(key)
        pct = f"{100 * (value / ref - 1):+.2f}%" if ref else "n/a"
        lines.append(f"| {label} | {fmt.format(value)} | {fmt.format(ref) if ref else 'n/a'} | {pct} |")
    if context is not None:
        lines += _run_numbers(context)
    lines += [
        "",
        "## Use it",
        "",
        "```python",
        "import headprune",
        "",
        f'model, tokenizer = headprune.load_pruned("{out}")  # masked-LM model with the heads above removed',
        "```",
        "",
        "Finetune a classifier on your own labelled tweets, then label new ones:",
        "",
        "```sh",
        f"headprune finetune --model {out} --train my.csv --out my-classifier",
        "headprune predict --model my-classifier my_tweets.csv > labels.csv",
        "```",
        "",
    ]
    return "\n".join(lines)


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


def _as_set(pairs) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, head in pairs:
        out.setdefault(int(layer), []).append(int(head))
    return out
