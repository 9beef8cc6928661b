"""The pruned-model formats: a directory that loads back with its heads pruned, its saved size, and
how to tell an ONNX export from it.

A pruned-model directory (format "headprune-pruned-model/3") holds the model's config,
`model.safetensors`, the tokenizer files and `headprune.json` (architecture, model type, original
shape, kept and pruned heads in original coordinates, plus any extra keys the writer adds). The
weights include the checkpoint's pooler that a masked-LM model carries beside its modules
(`model.headprune_pooler_state`), under the base model's prefix, so `AutoModel` and the sequence
classifier load the pretrained pooler; `config.json`'s `headprune_pooler` says whether it is there.

transformers has no per-layer head counts. Where a layer lost only some of its heads, `config.json`
names the model type `headprune-pruned-<type>` and an `auto_map`, and the directory holds
`modeling_headprune.py`, a copy of the package's `modeling_headprune` module: transformers classes
that shrink their attention to the heads config.json records. `from_pretrained(DIR,
trust_remote_code=True)` runs that file where headprune is not installed; `import headprune`
registers the package's own copy of those classes (`register_auto_classes`), so `from_pretrained(DIR)`
works without running the directory's file. A model that only lost whole layers keeps its model
type: plain transformers loads it exactly. `load_pruned` rebuilds the full-shape architecture,
prunes it as recorded, then loads the weights strictly; it also loads format 1 (always the plain
model type) and 2 (the `headprune-pruned-<type>` model type with no `auto_map`, no pooler).

An ONNX directory (`deploy.save_onnx`) holds `model.onnx`, the tokenizer files and `headprune-onnx.json`.

`model_files` is a pruned-model directory in memory ({file name: bytes}), and `load_model_files`
rebuilds the model and tokenizer from it: what another process (a Ray worker) is sent instead of
pickled transformers objects, which do not unpickle in a fresh process across transformers versions
(5.17: "Could not import module 'GenerationMixin'")."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from .errors import HeadpruneError
from .surgery import kept_heads, original_shape, prune_heads, pruned_heads

META_FILE = "headprune.json"
FORMAT = "headprune-pruned-model/3"
# config.json's model type where a layer keeps only some of its heads (see above); the classes of
# `modeling_headprune` carry the same names.
PRUNED_MODEL_TYPE = "headprune-pruned-{}"
# The modeling file written beside such a model, a copy of the package's module of the same name.
MODELING_FILE = "modeling_headprune.py"
ONNX_META_FILE = "headprune-onnx.json"
# Beside META_FILE in a classifier's directory (`classify.save_classifier`): labels, base, metrics.
CLASSIFIER_FILE = "headprune-classifier.json"

# Files that must travel unchanged with every saved model: transformers 5.x writes a corrupted
# `bpe.codes` when it saves BertweetTokenizer.
VERBATIM_TOKENIZER_FILES = ("vocab.txt", "bpe.codes")
# Where a base model keeps its pooler (BERT and RoBERTa alike), below the base model's prefix.
POOLER = "pooler"


def is_pruned_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory written by `save_pruned` (so loaders must use `load_pruned`)."""
    return (Path(path) / META_FILE).is_file()


def is_onnx_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory written by `deploy.save_onnx` (an ONNX graph for onnxruntime)."""
    return (Path(path) / ONNX_META_FILE).is_file()


def register_auto_classes() -> None:
    """Register the classes of `modeling_headprune` with transformers' Auto classes, so that
    `AutoConfig`/`AutoModel`/`AutoModelForMaskedLM`/`AutoModelForSequenceClassification.from_pretrained`
    load a pruned-model directory without `trust_remote_code` (and without running its modeling file)."""
    import transformers

    from .modeling_headprune import AUTO_CLASSES

    for classes in AUTO_CLASSES.values():
        config_class = classes["AutoConfig"]
        transformers.AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        for auto, model_class in classes.items():
            if auto != "AutoConfig":
                getattr(transformers, auto).register(config_class, model_class, exist_ok=True)


def _deduplicated(model, prefer_base_model: bool = False) -> tuple[dict, dict[str, str]]:
    """The model's state dict with tied weights once, and {dropped name: the name kept}; with
    `prefer_base_model`, a tied weight keeps its base model's name (the word embeddings, not a
    masked-LM decoder), which `AutoModel` looks for."""
    from safetensors.torch import _remove_duplicate_names

    state = model.state_dict()
    base = f"{model.base_model_prefix}."
    preferred = [n for n in state if n.startswith(base)] if prefer_base_model else None
    groups = _remove_duplicate_names(state, preferred_names=preferred)
    dropped = {name: kept for kept, names in groups.items() for name in names}
    return {name: t.contiguous() for name, t in state.items() if name not in dropped}, dropped


def weights(model) -> tuple[dict, dict[str, str]]:
    """The tensors of `save_pruned`'s model.safetensors and its metadata: the state dict with tied
    weights once (the metadata names the dropped ones, as `safetensors.torch.save_model` does), plus
    the pooler the model carries beside its modules where it has no pooler of its own."""
    tensors, dropped = _deduplicated(model, prefer_base_model=True)
    prefix = f"{model.base_model_prefix}.{POOLER}."
    if not any(name.startswith(prefix) for name in tensors):
        pooler = getattr(model, "headprune_pooler_state", None) or {}
        tensors.update({prefix + name: t.contiguous() for name, t in pooler.items()})
    return tensors, {"format": "pt", **dropped}


def file_size(model) -> int:
    """Size in bytes of the model.safetensors `save_pruned` writes for `model` (serialised in memory)."""
    from safetensors.torch import save

    tensors, metadata = weights(model)
    return len(save(tensors, metadata=metadata))


def save_pruned(model, tokenizer, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write config, safetensors weights (with the pooler the model carries), tokenizer files and
    `headprune.json` (the kept-heads map); where a layer keeps only some heads, also the modeling file
    and `auto_map` that let transformers load it (see the module docstring)."""
    from importlib.resources import files

    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    n_layers, n_heads = original_shape(model.config)
    kept = kept_heads(model)
    tensors, metadata = weights(model)
    config = json.loads((directory / "config.json").read_text())
    config["headprune_pooler"] = any(name.startswith(f"{model.base_model_prefix}.{POOLER}.") for name in tensors)
    (directory / MODELING_FILE).unlink(missing_ok=True)
    if any(len(hs) < n_heads for hs in kept.values()):
        config["model_type"] = PRUNED_MODEL_TYPE.format(model.config.model_type)
        auto_map = auto_map_of(model.config.model_type)
        if auto_map:
            config["auto_map"] = auto_map
            (directory / MODELING_FILE).write_bytes((files(__package__) / MODELING_FILE).read_bytes())
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(directory / "model.safetensors"), metadata=metadata)
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


def auto_map_of(model_type: str) -> dict[str, str]:
    """config.json's `auto_map` for a pruned model of the family `model_type` ({} for a family the
    modeling file does not cover, whose directory transformers then refuses)."""
    from .modeling_headprune import AUTO_CLASSES

    module = MODELING_FILE.removesuffix(".py")
    return {auto: f"{module}.{cls.__name__}" for auto, cls in AUTO_CLASSES.get(model_type, {}).items()}


def load_pruned(directory: str | os.PathLike):
    """Load a directory written by `save_pruned` (any format): (model, tokenizer), outputs identical to
    the saved model, the pooler saved beside a masked-LM model back in `model.headprune_pooler_state`.

    headprune builds the model itself (the family's transformers class, pruned by `surgery`): the
    directory's modeling file is never run."""
    import transformers
    from safetensors.torch import _remove_duplicate_names, load_file

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
    tensors = load_file(str(directory / "model.safetensors"))
    own = model.state_dict()
    prefix = f"{model.base_model_prefix}.{POOLER}."
    pooler = {name[len(prefix):]: tensors.pop(name) for name in list(tensors)
              if name.startswith(prefix) and name not in own}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {name for names in _remove_duplicate_names(own, preferred_names=tensors.keys()).values() for name in names}
    wrong = [name for name in missing if name not in tied] + list(unexpected)
    if wrong:
        raise HeadpruneError(
            f"{directory / 'model.safetensors'}: does not match the pruned model ({len(wrong)} weights differ, "
            f"e.g. {wrong[0]})"
        )
    if pooler:
        model.headprune_pooler_state = pooler
    model.eval()
    tokenizer = load_saved_tokenizer(directory) if (directory / "tokenizer_config.json").is_file() else None
    return model, tokenizer


def model_files(model, tokenizer) -> dict[str, bytes]:
    """`model` and `tokenizer` as the files of `save_pruned` ({name: content}; the tokenizer's
    verbatim files and the pooler state the model carries included): plain bytes, which any process
    with headprune rebuilds exactly (`load_model_files`)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="headprune-model-") as tmp:
        save_pruned(model, tokenizer, tmp)
        return {str(f.relative_to(tmp)): f.read_bytes() for f in sorted(Path(tmp).rglob("*")) if f.is_file()}


def load_model_files(files: Mapping[str, bytes], directory: str | os.PathLike):
    """Rebuild (model, tokenizer) from `model_files` by writing them into `directory` (which must
    outlive the tokenizer: it is the tokenizer's `headprune_source`, the verbatim files' origin when
    it is saved again) and loading that with `load_pruned`: the same module tree, weights, config
    and pooler state, so the same outputs and fingerprint."""
    directory = Path(directory)
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return load_pruned(directory)


def read_config(name_or_path: str | os.PathLike):
    """The transformers config of a model (hub id or directory); of a pruned directory, the family's
    own config (the pruned model type restored; `auto_map` and `headprune_pooler`, which describe the
    directory's files, left out)."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    file = Path(name_or_path) / "config.json"
    if file.is_file():
        data = json.loads(file.read_text())
        model_type = str(data.get("model_type", ""))
        prefix = PRUNED_MODEL_TYPE.format("")
        if model_type.startswith(prefix) or "headprune_pooler" in data:
            data["model_type"] = model_type.removeprefix(prefix)
            for key in ("auto_map", "headprune_pooler"):
                data.pop(key, None)
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
    the file `save_pruned` writes up to the few bytes of metadata naming the dropped tied weights and
    the pooler a masked-LM model carries beside it (`file_size` counts both)."""
    from safetensors.torch import save

    tensors, _ = _deduplicated(model)
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
