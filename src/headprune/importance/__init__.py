"""Importance criteria: interchangeable objects that produce an `Order` (heads from most to least
important). The surgery and the searches never know which criterion made an order.

Every criterion has `name`, `kind` ("importance" or "random") and
`order(base, store=, executor=, device=, on_result=, deadline=, loader=, deterministic=) -> Order`;
a criterion that needs no data ignores what it does not use. `criterion_for` maps the names of a
configuration's `[step2] orders` to criteria: the one place that reads them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from ..data import Dataset
from ..errors import HeadpruneError
from .gradient import (
    GradientImportance,
    ImportanceAccumulator,
    ImportanceContext,
    ImportanceSettings,
    classification_model,
    importance_matrices,
    importance_order,
    min_max,
    pooler_tag,
    step1_key_settings,
)
from .order import Order, rank_heads
from .random import RandomImportance, random_order


class Criterion(Protocol):
    name: str
    kind: str

    def order(self, base, **run) -> Order: ...


def criterion_for(name: str, step1_datasets: Callable[[], Sequence[Dataset]] = list, step1_seeds: Sequence[int] = (),
                  settings: ImportanceSettings = ImportanceSettings()) -> Criterion:
    """`OI`: Step 1's gradient criterion on `step1_datasets()` x `step1_seeds` (the datasets are
    loaded only for it); `A<n>`: the random order of seed n."""
    if name == "OI":
        return GradientImportance(list(step1_datasets()), step1_seeds, settings, name)
    if name[:1] == "A" and name[1:].isdigit():
        return RandomImportance(int(name[1:]), name)
    raise HeadpruneError(f"unknown order '{name}': use OI or A<seed> (e.g. A1)")


__all__ = [
    "Criterion", "GradientImportance", "ImportanceAccumulator", "ImportanceContext", "ImportanceSettings", "Order",
    "RandomImportance", "classification_model", "criterion_for", "importance_matrices", "importance_order",
    "min_max", "pooler_tag", "rank_heads", "random_order", "step1_key_settings",
]
