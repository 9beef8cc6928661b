"""The pruned-model formats: a directory that loads back with its heads pruned, its saved size, and
how to tell an ONNX export from it.

A pruned-model directory holds the model's config, `model.safetensors`, the tokenizer files and
`headprune.json` (format "headprune-pruned-model/2": architecture, model type, original shape, kept
and pruned heads in original coordinates, plus any extra keys the writer adds). transformers has no
per-layer head counts, so `load_pruned` rebuilds the full-shape architecture, prunes it as recorded,
then loads the weights strictly. Plain transformers must not load such a model wrongly: where a layer
lost only some of its heads, `config.json` names the model type `headprune-pruned-<type>`, which
`AutoConfig`/`AutoModel.from_pretrained` refuse (even with `ignore_mismatched_sizes=True`, which would
otherwise re-initialise those layers at random). A model that only lost whole layers keeps its model
type: plain transformers loads it exactly. Format 1 (always the plain model type) still loads.

An ONNX directory (`deploy.save_onnx`) holds `model.onnx`, the tokenizer files and `headprune-onnx.json`.

`model_files` is a pruned-model directory in memory ({file name: bytes}, plus the checkpoint's pooler),
and `load_model_files` rebuilds the model and tokenizer from it: what another process (a Ray worker)
is sent instead of pickled transformers objects, which do not unpickle in a fresh process across
transformers versions (5.17: "Could not import module 'GenerationMixin'")."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from .errors import HeadpruneError
from .surgery import kept_heads, original_shape, prune_heads, pruned_heads

META_FILE = "headprune.json"
FORMAT = "headprune-pruned-model/2"
# config.json's model type where plain transformers would load the weights wrongly (see above).
REFUSED_MODEL_TYPE = "headprune-pruned-{}"
ONNX_META_FILE = "headprune-onnx.json"
# Beside META_FILE in a classifier's directory (`classify.save_classifier`): labels, base, metrics.
CLASSIFIER_FILE = "headprune-classifier.json"

# Files that must travel unchanged with every saved model: transformers 5.x writes a corrupted
# `bpe.codes` when it saves BertweetTokenizer.
VERBATIM_TOKENIZER_FILES = ("vocab.txt", "bpe.codes")
# In `model_files` only: the checkpoint's pooler that a masked-LM model carries beside its modules
# (`model.headprune_pooler_state`, see `models.pretrained_pooler`).
POOLER_FILE = "headprune-pooler.safetensors"


def is_pruned_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory written by `save_pruned` (so loaders must use `load_pruned`)."""
    return (Path(path) / META_FILE).is_file()


def is_onnx_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory written by `deploy.save_onnx` (an ONNX graph for onnxruntime)."""
    return (Path(path) / ONNX_META_FILE).is_file()


def save_pruned(model, tokenizer, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write config, safetensors weights, tokenizer files and `headprune.json` (the kept-heads map)."""
    from safetensors.torch import save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    n_layers, n_heads = original_shape(model.config)
    kept = kept_heads(model)
    if any(len(hs) < n_heads for hs in kept.values()):
        config = json.loads((directory / "config.json").read_text())
        config["model_type"] = REFUSED_MODEL_TYPE.format(model.config.model_type)
        (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_model(model, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory)
    meta = {
        "format": FORMAT,
        "architecture": type(model).__name__,
        "model_type": model.config.model_type,
        "original_layers": n_layers,
        "heads_per_layer": n_heads,
        "kept": {str(k): v for k, v in kept.items()},
        "pruned": [list(p) for p in pruned_heads(model)],
        **(extra or {}),
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def load_pruned(directory: str | os.PathLike):
    """Load a directory written by `save_pruned`: (model, tokenizer), outputs identical to the saved model."""
    import transformers
    from safetensors.torch import load_model

    directory = Path(directory)
    if not is_pruned_dir(directory):
        raise HeadpruneError(f"{directory}: not a pruned model directory (no {META_FILE})")
    meta = json.loads((directory / META_FILE).read_text())
    config = read_config(directory)
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
    tokenizer = load_saved_tokenizer(directory) if (directory / "tokenizer_config.json").is_file() else None
    return model, tokenizer


def model_files(model, tokenizer) -> dict[str, bytes]:
    """`model` and `tokenizer` as the files of `save_pruned` ({name: content}; the tokenizer's
    verbatim files included), and the pooler state the model carries (`POOLER_FILE`), if any: plain
    bytes, which any process with headprune rebuilds exactly (`load_model_files`)."""
    import tempfile

    from safetensors.torch import save

    with tempfile.TemporaryDirectory(prefix="headprune-model-") as tmp:
        save_pruned(model, tokenizer, tmp)
        files = {str(f.relative_to(tmp)): f.read_bytes() for f in sorted(Path(tmp).rglob("*")) if f.is_file()}
    pooler = getattr(model, "headprune_pooler_state", None)
    if pooler is not None:
        files[POOLER_FILE] = save({name: t.contiguous() for name, t in pooler.items()})
    return files


def load_model_files(files: Mapping[str, bytes], directory: str | os.PathLike):
    """Rebuild (model, tokenizer) from `model_files` by writing them into `directory` (which must
    outlive the tokenizer: it is the tokenizer's `headprune_source`, the verbatim files' origin when
    it is saved again) and loading that with `load_pruned`: the same module tree, weights, config
    and pooler state, so the same outputs and fingerprint."""
    from safetensors.torch import load

    directory = Path(directory)
    for name, content in files.items():
        if name == POOLER_FILE:
            continue
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    model, tokenizer = load_pruned(directory)
    if POOLER_FILE in files:
        model.headprune_pooler_state = load(files[POOLER_FILE])
    return model, tokenizer


def read_config(name_or_path: str | os.PathLike):
    """The transformers config of a model (hub id or directory), also of a pruned directory whose
    config.json carries the refused model type (restored here)."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    file = Path(name_or_path) / "config.json"
    if file.is_file():
        data = json.loads(file.read_text())
        model_type = str(data.get("model_type", ""))
        prefix = REFUSED_MODEL_TYPE.format("")
        if model_type.startswith(prefix):
            data["model_type"] = model_type[len(prefix) :]
            return CONFIG_MAPPING[data["model_type"]].from_dict(data)
    return AutoConfig.from_pretrained(name_or_path)


def load_saved_tokenizer(directory: str | os.PathLike):
    """The tokenizer saved in a pruned or ONNX directory (transformers' note that config.json's model
    type is not one it knows is expected there, so it is silenced)."""
    import logging

    from transformers import AutoTokenizer

    logger = logging.getLogger("transformers.configuration_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    finally:
        logger.setLevel(level)
    tokenizer.headprune_source = str(directory)
    return tokenizer


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
