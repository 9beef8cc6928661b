"""Importance criteria: interchangeable objects that produce an `Order` (heads from most to least
important). The surgery and the searches never know which criterion made an order.

Every criterion has `name`, `kind` and `order(base, run: Step1Run) -> Order` (`Step1Run`: how
Step 1's finetunings run: store, executor, device, deadline, ...); a criterion that needs no data
ignores it. The kinds: "importance" (read from
Step 1's finetunings, which run through the store and the Step 1 executor: `gradient` OI,
`gradient-layer` OI-layer, `fisher`), "weights" (from the checkpoint alone: `magnitude`) and "random"
(`A<seed>`). `criterion_for` maps the names of a configuration's `[step2] orders`
(`settings.ORDER_CRITERIA`) to criteria: the one place that builds them from names. `stability`
measures how well an order reproduces."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from ..data import Dataset
from ..errors import HeadpruneError
from ..settings import ORDER_NAMES, ImportanceSettings, order_criterion
from .gradient import GradientImportance, Step1Criterion, Step1Run, importance_order
from .magnitude import MagnitudeImportance
from .order import Order, RunMatrix, rank_heads
from .random import RandomImportance, random_order
from .stability import order_stability
from .statistics import FisherImportance, GradientLayerImportance


class Criterion(Protocol):
    """What the pipeline needs of an importance criterion: its `name` (the order's), its `kind`, and
    `order(base, run)`, the heads from most to least important (Torch-Pruning's `Importance`)."""

    name: str
    kind: str

    def order(self, base, run: Step1Run = ...) -> Order: ...


def criterion_for(name: str, step1_datasets: Callable[[], Sequence[Dataset]] = list, step1_seeds: Sequence[int] = (),
                  settings: ImportanceSettings = ImportanceSettings()) -> Criterion:
    """`OI`, `OI-layer`, `fisher`: read from Step 1's finetunings on `step1_datasets()` x `step1_seeds`
    (the datasets are loaded only for them; all three share the finetunings); `magnitude`: from the
    weights; `A<n>`: the random order of seed n."""
    step1 = {"gradient": GradientImportance, "gradient-layer": GradientLayerImportance, "fisher": FisherImportance}
    criterion = order_criterion(name)
    if criterion in step1:
        return step1[criterion](list(step1_datasets()), step1_seeds, settings, name)
    if criterion == "magnitude":
        return MagnitudeImportance(name)
    if criterion == "random":
        return RandomImportance(int(name[1:]), name)  # A<seed>, as order_criterion read it
    raise HeadpruneError(f"unknown order '{name}': use {ORDER_NAMES}")


# What the rest of headprune and a user's script need; the criteria's parts live in their modules.
__all__ = [
    "Criterion", "FisherImportance", "GradientImportance", "GradientLayerImportance", "ImportanceSettings",
    "MagnitudeImportance", "Order", "RandomImportance", "RunMatrix", "Step1Criterion", "Step1Run", "criterion_for",
    "importance_order", "order_stability", "random_order", "rank_heads",
]
