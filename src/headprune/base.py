"""The base model every evaluation starts from: the pretrained masked-LM encoder, its identity
(fingerprint, shape, token limit), and the one-time warm-up of a fresh masked-LM head (METHOD.md,
"Model"), cached by everything that determines it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .data import expand_datasets, load_dataset
from .devices import resolve_device
from .families import family_of, module_at
from .models import fingerprint, load_model, max_length
from .scoring import adamw, encode, masked_lm_loss
from .settings import WarmupSettings
from .store import make_key
from .surgery import original_shape


def warm_up_mlm_head(model, tokenizer, texts: Sequence[str], warmup: WarmupSettings, device: torch.device) -> dict:
    """Train a fresh masked-LM head alone (encoder and tied embeddings frozen). Returns its state."""
    from transformers import DataCollatorForLanguageModeling

    family = family_of(model.config)
    torch.manual_seed(warmup.seed)
    head_params = {id(p) for path in family.mlm_head for p in module_at(model, path).parameters()}
    embedding_params = {id(p) for p in model.get_input_embeddings().parameters()}
    trainable = [p for p in model.parameters() if id(p) in head_params and id(p) not in embedding_params]
    for p in model.parameters():
        p.requires_grad_(id(p) in {id(t) for t in trainable})
    ids = encode(tokenizer, texts, max_length(tokenizer, model.config))
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=warmup.seed)
    generator = torch.Generator().manual_seed(warmup.seed)
    optimizer = adamw(trainable, warmup.learning_rate)
    model.to(device).train()
    for _ in range(warmup.steps):
        rows = torch.randint(len(ids), (warmup.batch_size,), generator=generator).tolist()
        batch = collator([{"input_ids": ids[i]} for i in rows])
        if not (batch["labels"] != -100).any():
            continue
        loss = masked_lm_loss(
            model, batch["input_ids"].to(device), batch["attention_mask"].to(device), batch["labels"].to(device)
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval().to("cpu")
    # The decoder tied to the (frozen) word embeddings is not the head's to keep: without it the
    # cached head of MiniLM is 0.2 MB instead of 48 MB (small enough to travel with a run).
    embeddings = model.get_input_embeddings().weight.data_ptr()
    return {
        name: t.detach().clone()
        for name, t in model.state_dict().items()
        if name.startswith(family.mlm_head_prefixes) and t.data_ptr() != embeddings
    }


# ----------------------------------------------------------------------------- the base model


@dataclass
class BaseModel:
    """The pretrained masked-LM model every evaluation starts from (CPU copy), and its identity."""

    name: str
    model: nn.Module
    tokenizer: object
    fingerprint: str
    n_layers: int
    n_heads: int
    max_length: int
    warmed_up: bool = False
    info: dict = field(default_factory=dict)

    @property
    def n_total_heads(self) -> int:
        return self.n_layers * self.n_heads


def load_base(
    name: str,
    warmup: WarmupSettings | None = WarmupSettings(),
    data_dir=None,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[str], None] | None = None,
    columns: tuple[str, str] = ("tweet", "class"),
    warm_up: Callable[..., dict] = warm_up_mlm_head,
) -> BaseModel:
    """Load the base model; a fresh masked-LM head is warmed up once (by `warm_up`) and cached in
    `cache_dir`. `columns`: the text and label columns of the warm-up datasets that are user files."""
    from safetensors.torch import load_file, save_file

    model, tokenizer = load_model(name)
    info: dict = {"fresh_mlm_head": bool(getattr(model.config, "headprune_fresh_mlm_head", False))}
    warmed = False
    if info["fresh_mlm_head"] and warmup is not None and warmup.steps > 0:
        warm_data = [load_dataset(ds, *columns, data_dir=data_dir) for ds in expand_datasets(list(warmup.datasets))]
        # The cached head is named by everything that determines it, the warm-up texts' content included.
        tag = make_key(model=fingerprint(model), warmup=asdict(warmup), data=[d.content_hash for d in warm_data])[:20]
        cache_file = Path(cache_dir) / f"mlm-head-{tag}.safetensors" if cache_dir is not None else None
        if cache_file is not None and cache_file.is_file():
            state = load_file(str(cache_file))
        else:
            if progress:
                progress(f"warming up the fresh masked-LM head ({warmup.steps} steps, encoder frozen)")
            texts = [t for d in warm_data for t in d.texts]
            dev = resolve_device(str(device)) if not isinstance(device, torch.device) else device
            state = warm_up(model, tokenizer, texts, warmup, dev)
            if cache_file is not None:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                save_file({k: v.contiguous() for k, v in state.items()}, str(cache_file))
        model.load_state_dict(state, strict=False)
        model.tie_weights()
        warmed = True
        info["warmup"] = asdict(warmup)
    model.eval()
    n_layers, n_heads = original_shape(model.config)
    return BaseModel(
        name=name,
        model=model,
        tokenizer=tokenizer,
        fingerprint=fingerprint(model),
        n_layers=n_layers,
        n_heads=n_heads,
        max_length=max_length(tokenizer, model.config),
        warmed_up=warmed,
        info=info,
    )


__all__ = ["BaseModel", "load_base", "warm_up_mlm_head"]
