"""Settings that are part of every score's key; light (no torch), so the configuration can hold them."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ScoreSettings:
    """Everything that determines a score besides model, pruned set, dataset and seed (METHOD.md).
    Also the [scoring] section of a configuration (frozen: a changed value is a new object)."""

    epochs: int = 4
    batch_size: int = 16
    learning_rate: float = 2e-5
    adam_epsilon: float = 1e-8
    mlm_probability: float = 0.15
    n_folds: int = 10
    feature_layers: int = 4
    max_length: int = 128

    def as_dict(self) -> dict:
        return asdict(self)


__all__ = ["ScoreSettings"]
