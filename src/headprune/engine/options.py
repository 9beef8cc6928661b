"""Engine options and what the batched engine supports."""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..families import FAMILIES

# The families whose rows say the engine implements them (`Family.batched_engine`): a view of the table.
SUPPORTED_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.batched_engine)
BETAS = (0.9, 0.999)  # torch.optim.AdamW's defaults, as the reference uses
# How the dropout streams are drawn: `torch.manual_seed(group_seed(seeds of a stack, in order))`
# before a stack trains (`stages.adjust_stacked`). Part of every batched score's store key: give it a
# new name whenever that drawing changes, so that scores drawn otherwise are not found.
DROPOUT_STREAMS = "group-seed-1"


@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs; none of these change what a score means (only rounding and speed)."""

    amp: bool | None = None  # bf16 autocast for training; None: on CUDA only (True on CPU: to test that path)
    feature_batch: int = 256  # rows per model per feature-extraction step
    max_models: int | None = None  # train at most this many models together (None: the whole group)
    width_multiple: int = 8  # pad each step's token axis to a multiple of this (fewer distinct shapes)
    prefetch: int | None = None  # steps prepared ahead by a background thread (None: 4 on CUDA, 0 on CPU)
    svm_workers: int = 4  # threads running libsvm (CPU) while the GPU goes on
    compile: bool = False  # torch.compile the training loss (CUDA only; experimental)
    pack: bool = False  # train tasks of different pruned sets together (masked stacks); see BatchedExecutor
    pack_models: int | None = None  # models per pack (None: what fits, `auto_pack_size`)
    pack_step_ratio: float = 1.25  # a pack's longest model has at most this many times the shortest's steps
    prep_workers: int | None = None  # processes drawing batches (None: on CUDA half the cores, at most 8; CPU 0)

    def resolved_prep_workers(self, device: torch.device) -> int:
        if self.prep_workers is not None:
            return max(0, int(self.prep_workers))
        return min(8, max(1, (os.cpu_count() or 2) // 2)) if device.type == "cuda" else 0

    def use_amp(self, device: torch.device) -> bool:
        return device.type == "cuda" if self.amp is None else bool(self.amp)


def supports(model) -> bool:
    """Whether the batched engine can run this masked-LM model: its family's row says the engine
    implements it, with absolute positions and embeddings as wide as the hidden states."""
    config = model.config
    family = FAMILIES.get(getattr(config, "model_type", None))
    return (
        family is not None
        and family.batched_engine
        and getattr(config, "position_embedding_type", "absolute") in (None, "absolute")
        and not getattr(config, "is_decoder", False)
        and getattr(config, "embedding_size", config.hidden_size) == config.hidden_size
    )


def group_seed(seeds: Sequence[int]) -> int:
    """The global RNG seed of a group (dropout): a function of the group's seeds, in order."""
    return zlib.crc32(",".join(str(int(s)) for s in seeds).encode()) & 0x7FFFFFFF


def batched_store_entries(options: EngineOptions, model, device: torch.device, pack_size: int | str
                          ) -> dict[str, Any]:
    """The entries a batched score's store key carries beyond the score settings: the engine
    (`engine`: batched, or batched-packed), the precision actually used (bf16 autocast or fp32), how
    dropout streams are drawn (`DROPOUT_STREAMS`), and what decides which models share them: the
    pack size and step ratio with packing (`packing.plan_packs`), else `max_models` where it splits
    a candidate's seeds. The stacks' members are not in the key: the same request gives the same
    stacks (`plan_units` plans over the whole of it), another one other stacks, equal statistically.
    Nor is the split of a pack that ran out of GPU memory (`BatchedExecutor` halves it; a resumed
    run halves from the full size again, so it may split otherwise).

    {} for a model the engine does not support: the executor scores it with the reference loop,
    whose keys it then shares."""
    if not supports(model):
        return {}
    entries: dict[str, Any] = {"engine": "batched-packed" if options.pack else "batched",
                               "precision": "bf16" if options.use_amp(device) else "fp32",
                               "dropout": DROPOUT_STREAMS}
    if options.pack:
        entries.update(pack_models=pack_size, pack_step_ratio=options.pack_step_ratio)
    elif options.max_models:
        entries["max_models"] = options.max_models
    return entries
