"""Settings that are part of every score's key, and the names of the importance orders; light (no
torch), so the configuration can hold and check them."""

from __future__ import annotations

import re
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


# The precisions of the adjusting step (`run.precision`): fp32, or bf16 autocast over fp32 weights.
PRECISIONS = ("fp32", "bf16")

# The names of `[step2] orders` and the criterion each stands for (`importance.criterion_for` builds
# it; the configuration checks names against this table before anything runs).
ORDER_CRITERIA: dict[str, str] = {
    "OI": "gradient",  # the dissertation's Step 1 (Algorithms 1-2)
    "OI-layer": "gradient-layer",  # the same gradients, normalised per layer (Michel et al. 2019)
    "fisher": "fisher",  # the squared gate gradients (Kwon et al. 2022)
    "magnitude": "magnitude",  # the norms of each head's weights, no data
}
RANDOM_ORDER = re.compile(r"A([1-9]\d*)")  # A<seed>: a seeded random order
ORDER_NAMES = "OI, OI-layer, fisher, magnitude, or A<seed> for a random order (A1, A2, ...)"


def order_criterion(name: str) -> str | None:
    """The criterion an order name stands for ("random" for A<seed>), or None for an unknown name."""
    if name in ORDER_CRITERIA:
        return ORDER_CRITERIA[name]
    return "random" if RANDOM_ORDER.fullmatch(name) else None


__all__ = ["ORDER_CRITERIA", "ORDER_NAMES", "PRECISIONS", "RANDOM_ORDER", "ScoreSettings", "order_criterion"]
