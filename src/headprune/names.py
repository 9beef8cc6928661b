"""The names of the models a run compares, as the dissertation writes them, built and read in one place.

A model is the complete model (`CM`), the model one strategy chose with one order (`M<order><strategy>`:
`MOIH1`, `MA1H3`), or the per-seed mean over the random orders' models of one strategy
(`MAM<strategy>`). The summary's keys are these names (`ModelName.label`); `ModelName.parse` reads
them back (summaries of every schema version), so no other module builds or picks apart a name."""

from __future__ import annotations

import re
from dataclasses import dataclass

COMPLETE = "CM"  # the complete (unpruned) model's name among the chosen models
_RANDOM_MEAN = "AM"  # MAM<strategy>: no order is named "AM" (settings.ORDER_CRITERIA: A<seed>, ...)
_NAME = re.compile(r"M(?P<order>.+)(?P<strategy>H\d+)")


@dataclass(frozen=True)
class ModelName:
    """One model of a run: `strategy` (H1, H2, H3) and `order` for a chosen model; `strategy` alone
    for the mean over the random orders (`random_mean`); neither for the complete model."""

    strategy: str | None = None
    order: str | None = None
    random_mean: bool = False

    @classmethod
    def complete(cls) -> ModelName:
        return cls()

    @classmethod
    def chosen(cls, order: str, strategy: str) -> ModelName:
        """The model `strategy` chose with the order `order` (M<order><strategy>)."""
        return cls(strategy=strategy, order=order)

    @classmethod
    def mean_of_random(cls, strategy: str) -> ModelName:
        """The per-seed mean of `strategy`'s models over the random orders (MAM<strategy>)."""
        return cls(strategy=strategy, random_mean=True)

    @classmethod
    def parse(cls, label: str) -> ModelName:
        """The model a summary's key names; ValueError for a name no run writes."""
        if label == COMPLETE:
            return cls.complete()
        match = _NAME.fullmatch(label)
        if match is None:
            raise ValueError(f"'{label}' is not a model name (CM, M<order><strategy> or MAM<strategy>)")
        if match["order"] == _RANDOM_MEAN:
            return cls.mean_of_random(match["strategy"])
        return cls.chosen(match["order"], match["strategy"])

    @property
    def is_complete(self) -> bool:
        return self.strategy is None

    @property
    def label(self) -> str:
        """The name as the summary and the report write it."""
        if self.is_complete:
            return COMPLETE
        return f"M{_RANDOM_MEAN if self.random_mean else self.order}{self.strategy}"

    def __str__(self) -> str:
        return self.label


__all__ = ["COMPLETE", "ModelName"]
