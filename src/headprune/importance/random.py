"""The random criterion: seeded permutations of the heads (the dissertation's baselines A1, A2, A3)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..base import BaseModel
from .order import Order


def random_order(
    n_layers: int, n_heads: int, seed: int, name: str = "A1", model: str = "", model_fingerprint: str = ""
) -> Order:
    """A seeded random permutation of the heads (the dissertation's baseline A1, A2, A3)."""
    permutation = np.random.default_rng(seed).permutation(n_layers * n_heads)
    ranked = [(int(i) // n_heads, int(i) % n_heads) for i in permutation]
    return Order(
        name=name,
        ranked=ranked,
        n_layers=n_layers,
        n_heads=n_heads,
        kind="random",
        model=model,
        model_fingerprint=model_fingerprint,
        seeds=[seed],
    )


@dataclass(frozen=True)
class RandomImportance:
    """`A<seed>`: a seeded random order; needs no data, no store and no executor."""

    seed: int
    name: str = ""
    kind = "random"

    def order(self, base: BaseModel, run: object = None) -> Order:
        """The order for `base` (a data-driven criterion's `Step1Run` is accepted and unused, so that
        the pipeline calls every criterion alike)."""
        return random_order(base.n_layers, base.n_heads, seed=self.seed, name=self.name or f"A{self.seed}",
                            model=base.name, model_fingerprint=base.fingerprint)


__all__ = ["RandomImportance", "random_order"]
