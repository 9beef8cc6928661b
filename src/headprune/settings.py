"""The method's frozen settings, each with its constraints as data (`constraints.py`): scoring
(part of every score's key), Step 1's finetuning (part of every Step 1 row's key), the warm-up of a
fresh masked-LM head (part of its cache key); and the names of the importance orders. Light (no
torch), so the configuration holds them (`[scoring]` is a `ScoreSettings`) or names their fields
(`[step1]`'s finetuning keys are `ImportanceSettings`', `[model] mlm_head_warmup_*` are
`WarmupSettings`'): a default and a constraint have their one home here."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import ClassVar

from .constraints import Constraint, Interval, Names

# Shared by the settings below: AdamW's step size and epsilon.
_LEARNING_RATE = Interval(float, 0, closed="neither")  # "positive"
_ADAM_EPSILON = Interval(float)  # any number, as before constraints were data


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

    constraints: ClassVar[dict[str, Constraint]] = {
        # 0 scores the pruned model without adjusting it (prune, features, SVM): the low fidelity
        # racing can screen with
        "epochs": Interval(int, 0, words="at least 0"),
        "batch_size": Interval(int, 1),
        "learning_rate": _LEARNING_RATE,
        "adam_epsilon": _ADAM_EPSILON,
        "mlm_probability": Interval(float, 0, 1, closed="neither"),
        "n_folds": Interval(int, 2),
        "feature_layers": Interval(int, 1),
        "max_length": Interval(int, 8, 512, closed="both"),
    }

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ImportanceSettings:
    """Finetuning for Step 1 (METHOD.md): fresh classification head, AdamW, batch 16, 4 epochs.
    The keys of the same names in `[step1]`."""

    epochs: int = 4
    batch_size: int = 16
    learning_rate: float = 2e-5
    adam_epsilon: float = 1e-8

    constraints: ClassVar[dict[str, Constraint]] = {
        "epochs": Interval(int, 1),
        "batch_size": Interval(int, 1),
        "learning_rate": _LEARNING_RATE,
        "adam_epsilon": _ADAM_EPSILON,
    }

    def as_dict(self) -> dict:
        """The settings part of a Step 1 row's key (these four names, whatever fields join later)."""
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "adam_epsilon": self.adam_epsilon,
        }


@dataclass(frozen=True)
class WarmupSettings:
    """Warm-up of a fresh masked-LM head (encoder frozen) on the G1 tweets; METHOD.md, "Model".
    `steps` and `datasets` are `[model] mlm_head_warmup_steps` and `mlm_head_warmup_datasets`."""

    steps: int = 300
    batch_size: int = 32
    learning_rate: float = 5e-4
    datasets: tuple[str, ...] = ("G1",)
    seed: int = 0

    constraints: ClassVar[dict[str, Constraint]] = {
        "steps": Interval(int, 0),
        "batch_size": Interval(int, 1),
        "learning_rate": _LEARNING_RATE,
        "datasets": Names(),  # as the configuration holds them: a list
        "seed": Interval(int, 0),
    }


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


__all__ = [
    "ORDER_CRITERIA",
    "ORDER_NAMES",
    "PRECISIONS",
    "RANDOM_ORDER",
    "ImportanceSettings",
    "ScoreSettings",
    "WarmupSettings",
    "order_criterion",
]
