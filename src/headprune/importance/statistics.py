"""Criteria read from the raw gate statistics of Step 1's finetunings (`gradient.GateStatistics`), the
same finetunings as the dissertation's order OI, normalised otherwise than Algorithm 2:

- `GradientLayerImportance` (`OI-layer`): the accumulated |d loss / d gate| with each layer's scores
  divided by their l2 norm within the layer (Michel et al. 2019, "Are Sixteen Heads Really Better
  than One?"). Gradients are larger near the classifier; Algorithm 2's min-max over all heads keeps
  that, so it prunes the lower layers first. Per layer, every layer's heads compete only with each
  other, and every layer has the same total weight.
- `FisherImportance` (`fisher`): the accumulated squared gradient of the gates, the (empirical,
  per-batch) Fisher information of the head mask, as Kwon et al. (2022, "A Fast Post-Training
  Pruning Framework for Transformers") score heads.

Each epoch's sums are normalised on their own (as Algorithm 2 normalises each epoch), then averaged
over epochs, datasets and seeds, so that no dataset or epoch weighs more for having larger gradients."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .gradient import GateStatistics, Step1Criterion


def per_layer_l2(matrix: np.ndarray) -> np.ndarray:
    """Each row (layer) divided by its l2 norm (Michel et al. 2019); a row of zeros stays zeros."""
    matrix = np.asarray(matrix, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def share_of_total(matrix: np.ndarray) -> np.ndarray:
    """The matrix divided by its sum (each head's share of the whole); all zeros stays zeros."""
    matrix = np.asarray(matrix, dtype=np.float64)
    total = float(matrix.sum())
    return matrix / total if total > 0 else np.zeros_like(matrix)


@dataclass
class GradientLayerImportance(Step1Criterion):
    """`OI-layer`: per epoch, the sum of |d loss / d gate| normalised per layer (`per_layer_l2`)."""

    name: str = "OI-layer"
    row = "statistics"

    def epoch_matrices(self, stored: GateStatistics) -> list[np.ndarray]:
        return [per_layer_l2(np.asarray(sums)) for sums in stored.abs_sums]


@dataclass
class FisherImportance(Step1Criterion):
    """`fisher`: per epoch, the sum of (d loss / d gate)^2 as a share of the whole (`share_of_total`).

    Squared gradients of whole batches (the gates' gradient of each batch's mean loss), not of single
    examples: the Fisher information as far as Step 1's finetunings read it, with no extra passes."""

    name: str = "fisher"
    row = "statistics"

    def epoch_matrices(self, stored: GateStatistics) -> list[np.ndarray]:
        return [share_of_total(np.asarray(sums)) for sums in stored.squared_sums]


__all__ = ["FisherImportance", "GradientLayerImportance", "per_layer_l2", "share_of_total"]
