"""The magnitude criterion: a head's importance is the size of its weights, read from the checkpoint
alone (no data, no training, nothing seeded): the l2 norm of its slices of the query, key and value
projections (its rows) and of the attention output projection (its columns), the parts that pruning
the head removes (`surgery.prune_heads`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..base import BaseModel
from ..errors import HeadpruneError
from ..families import family_of, module_at
from ..surgery import encoder_layers, kept_heads, original_shape
from .order import Order, rank_heads

# What the matrix is, as the order's `settings` (there are no rows to key: nothing is stored).
MAGNITUDE_SETTINGS = {"criterion": "magnitude", "norm": "l2 of the query, key, value rows and output columns"}


def magnitude_matrix(model) -> np.ndarray:
    """(layers x heads): the l2 norm of each head's weights in Q, K, V (rows) and O (columns), biases
    left out (O's bias is shared by all heads). Where the family keeps them comes from its row in
    `families`. The model must have every head (an order ranks all of them)."""
    n_layers, n_heads = original_shape(model.config)
    if any(len(heads) != n_heads for heads in kept_heads(model).values()) or len(kept_heads(model)) != n_layers:
        raise HeadpruneError("magnitude: the model is pruned already; an order ranks the heads of a complete model")
    family = family_of(model.config)
    size = int(model.config.hidden_size) // n_heads
    out = np.zeros((n_layers, n_heads), dtype=np.float64)
    with torch.no_grad():
        for layer, module in enumerate(encoder_layers(model)):
            rows = [module_at(module, path).weight.detach().to("cpu", torch.float64)
                    for path in (family.query, family.key, family.value)]
            columns = module_at(module, family.output).weight.detach().to("cpu", torch.float64)
            for head in range(n_heads):
                part = slice(head * size, (head + 1) * size)
                squares = sum(float((w[part, :] ** 2).sum()) for w in rows) + float((columns[:, part] ** 2).sum())
                out[layer, head] = squares ** 0.5
    return out


@dataclass(frozen=True)
class MagnitudeImportance:
    """`magnitude`: heads ranked by the norm of their weights (`magnitude_matrix`); needs no data, no
    store and no executor, and gives the same order every time."""

    name: str = "magnitude"
    kind = "weights"

    def order(self, base: BaseModel, run: object = None) -> Order:
        """The order for `base` (a data-driven criterion's `Step1Run` is accepted and unused, so that
        the pipeline calls every criterion alike)."""
        matrix = magnitude_matrix(base.model)
        return Order(name=self.name, ranked=rank_heads(matrix), n_layers=base.n_layers, n_heads=base.n_heads,
                     kind=self.kind, matrix=matrix.tolist(), model=base.name, model_fingerprint=base.fingerprint,
                     settings=dict(MAGNITUDE_SETTINGS))


__all__ = ["MAGNITUDE_SETTINGS", "MagnitudeImportance", "magnitude_matrix"]
