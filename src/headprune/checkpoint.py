"""The pruned-model format: a directory that loads back with its heads pruned, and its saved size.

A pruned-model directory holds the model's config, `model.safetensors`, the tokenizer files and
`headprune.json` (format "headprune-pruned-model/1": architecture, original shape, kept and pruned
heads in original coordinates, plus any extra keys the writer adds). transformers alone cannot load
it (its config describes the pruned shape only through headprune's keys), so `load_pruned` rebuilds
the full-shape architecture, prunes it as recorded, then loads the weights strictly."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .errors import HeadpruneError
from .surgery import kept_heads, original_shape, prune_heads, pruned_heads

META_FILE = "headprune.json"
FORMAT = "headprune-pruned-model/1"

# Files that must travel unchanged with every saved model: transformers 5.x writes a corrupted
# `bpe.codes` when it saves BertweetTokenizer.
VERBATIM_TOKENIZER_FILES = ("vocab.txt", "bpe.codes")


def is_pruned_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory written by `save_pruned` (so loaders must use `load_pruned`)."""
    return (Path(path) / META_FILE).is_file()


def save_pruned(model, tokenizer, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write config, safetensors weights, tokenizer files and `headprune.json` (the kept-heads map)."""
    from safetensors.torch import save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    save_model(model, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory)
    n_layers, n_heads = original_shape(model.config)
    meta = {
        "format": FORMAT,
        "architecture": type(model).__name__,
        "original_layers": n_layers,
        "heads_per_layer": n_heads,
        "kept": {str(k): v for k, v in kept_heads(model).items()},
        "pruned": [list(p) for p in pruned_heads(model)],
        **(extra or {}),
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def load_pruned(directory: str | os.PathLike):
    """Load a directory written by `save_pruned`: (model, tokenizer), outputs identical to the saved model."""
    import transformers
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoTokenizer

    directory = Path(directory)
    if not is_pruned_dir(directory):
        raise HeadpruneError(f"{directory}: not a pruned model directory (no {META_FILE})")
    meta = json.loads((directory / META_FILE).read_text())
    config = AutoConfig.from_pretrained(directory)
    kept = {int(k): v for k, v in meta["kept"].items()}
    config.num_hidden_layers = int(meta["original_layers"])
    for attr in ("headprune_kept", "headprune_original_layers"):
        if hasattr(config, attr):
            delattr(config, attr)
    architecture = getattr(transformers, meta.get("architecture", ""), None)
    if architecture is None:
        raise HeadpruneError(f"{directory}: unknown architecture '{meta.get('architecture')}'")
    model = architecture(config)
    n_heads = int(meta["heads_per_layer"])
    to_prune = {l: [h for h in range(n_heads) if h not in kept.get(l, [])] for l in range(config.num_hidden_layers)}
    to_prune = {l: hs for l, hs in to_prune.items() if hs}
    if to_prune:
        prune_heads(model, to_prune)
    load_model(model, str(directory / "model.safetensors"), strict=True)
    model.eval()
    tokenizer = None
    if (directory / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(directory)
        tokenizer.headprune_source = str(directory)
    return model, tokenizer


def saved_size(model) -> int:
    """Size in bytes of the model's safetensors file (written to memory, tied weights once).

    The size every score records (`size_bytes`): serialising in memory costs no disk, and it equals
    the file `save_pruned` writes up to the few bytes of metadata naming the dropped tied weights."""
    from safetensors.torch import _remove_duplicate_names, save

    state = model.state_dict()
    duplicates = {name for names in _remove_duplicate_names(state).values() for name in names}
    tensors = {name: t.contiguous() for name, t in state.items() if name not in duplicates}
    return len(save(tensors, metadata={"format": "pt"}))


def save_tokenizer(tokenizer, directory: str | os.PathLike) -> None:
    """Save the tokenizer, then copy the original vocab.txt/bpe.codes over whatever was written."""
    directory = Path(directory)
    tokenizer.save_pretrained(directory)
    source = getattr(tokenizer, "headprune_source", None) or getattr(tokenizer, "name_or_path", None)
    if not source:
        return
    for filename in VERBATIM_TOKENIZER_FILES:
        original = find_file(source, filename)
        if original is not None and Path(original).resolve() != (directory / filename).resolve():
            shutil.copyfile(original, directory / filename)


def find_file(source: str, filename: str) -> str | None:
    local = Path(source) / filename
    if local.is_file():
        return str(local)
    if Path(source).is_dir():
        return None
    try:
        from transformers.utils import cached_file

        return cached_file(source, filename, _raise_exceptions_for_missing_entries=False)
    except Exception:  # noqa: BLE001 - optional file, absent or offline
        return None
