"""What every section of the report reads: the run's shape, orders and chosen models, in the dissertation's order."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import STRATEGIES, GeneralizationSection
from ..names import COMPLETE, ModelName
from ..summary import ChosenModel, DatasetScores, RandomMean, Significance, Summary


def model_name(name: str) -> ModelName | None:
    """The typed name of a model the summary names (None for a name no run writes: a hand-written summary's)."""
    try:
        return ModelName.parse(name)
    except ValueError:
        return None


def is_random_mean(name: str) -> bool:
    """Whether `name` is a mean over the random orders' models (MAM<strategy>)."""
    model = model_name(name)
    return model is not None and model.random_mean


@dataclass
class RunFacts:
    """What every section needs: shape, orders, chosen models and model ordering."""

    summary: Summary
    n_layers: int
    n_heads: int
    orders: list[str]
    random_orders: set[str]
    chosen: dict[str, ChosenModel]
    generalization: dict[str, dict[str, DatasetScores]]
    significance: list[Significance]
    random_means: dict[str, RandomMean]
    alpha: float  # the significance level of the summary's t-tests
    directory: Path  # where the figures are written
    figures: dict[str, Path] = field(default_factory=dict)

    @property
    def total_heads(self) -> int:
        return self.n_layers * self.n_heads

    def model_key(self, name: str) -> tuple:
        """Dissertation order: by strategy (H1, H2, H3), the random-order mean, then each order; CM last."""
        model = model_name(name)
        if model is not None and model.is_complete:
            return (len(STRATEGIES) + 1, 0, "")
        strategy = model.strategy if model else None
        s = STRATEGIES.index(strategy) if strategy in STRATEGIES else len(STRATEGIES)
        if model is not None and model.random_mean:
            return (s, 0, name)
        order = model.order if model else None
        o = self.orders.index(order) + 1 if order in self.orders else len(self.orders) + 1
        return (s, o, name)

    def sort(self, names) -> list[str]:
        return sorted(names, key=self.model_key)

    def complete(self, key: str) -> int | None:
        """The complete model's "n_params" or "size_bytes": measured with its scores, else the run's model's."""
        cm = self.chosen.get(COMPLETE)
        return (getattr(cm, key) if cm else None) or getattr(self.summary.model, key)

    def individual_models(self) -> list[str]:
        """The generalization check's models one by one (no random-order mean), CM last."""
        return [m for m in self.sort(self.generalization) if m != COMPLETE and not is_random_mean(m)] + [COMPLETE]

    def pruned_set(self, name: str) -> set[tuple[int, int]]:
        info = self.chosen.get(name)
        return set(info.pruned_heads) if info else set()


def facts(summary: Summary, directory: Path) -> RunFacts:
    """The facts of `summary`, its figures to be written in `directory`."""
    orders = summary.orders or {}
    generalization = summary.generalization
    return RunFacts(
        summary=summary,
        n_layers=summary.model.n_layers,
        n_heads=summary.model.n_heads,
        orders=list(orders),
        random_orders={name for name, order in orders.items() if order.is_random},
        chosen=summary.chosen or {},
        generalization=generalization.models if generalization else {},
        significance=generalization.significance if generalization else [],
        random_means=summary.random_means or {},
        directory=directory,
        alpha=float(((summary.config or {}).get("generalization") or {}).get("alpha", GeneralizationSection.alpha)),
    )


__all__ = ["RunFacts", "facts", "is_random_mean", "model_name"]
