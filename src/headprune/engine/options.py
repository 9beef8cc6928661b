"""Engine options and what the batched engine supports."""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..families import FAMILIES

Head = tuple[int, int]

# The families whose rows say the engine implements them (`Family.batched_engine`): a view of the table.
SUPPORTED_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.batched_engine)
BETAS = (0.9, 0.999)  # torch.optim.AdamW's defaults, as the reference uses


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
