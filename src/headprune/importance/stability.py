"""How well an order reproduces: pure functions over the per-(dataset, seed) importance matrices of a
Step 1 order (`Order.runs`), so that a user sees whether an order is signal or noise.

- Agreement between runs: the Spearman correlation of two runs' matrices over all heads, and within
  layers (the mean over layers of the Spearman of each layer's heads: whether the order *inside* a
  layer reproduces, apart from the layer pattern). Between seeds: runs of the same dataset with
  different seeds; between datasets: runs of the same seed on different datasets (single runs
  against single runs in both, so the two numbers are alike in noise).
- A bootstrap over the runs: resample the (dataset, seed) runs with replacement (seeded), average,
  rank, and count how often each head falls among the k least important, for each k H1 prunes; the
  agreement at k is the mean of that share over the full order's k least important heads (1: every
  resample prunes exactly those heads first).

A random order is a seeded permutation, with no signal by construction; a weights order (magnitude)
is computed from the checkpoint alone and is the same every time: neither has runs to compare, and
`order_stability` says so instead of measuring."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence

import numpy as np
from scipy.stats import spearmanr

from .order import Order, RunMatrix, rank_heads

RESAMPLES = 1000  # bootstrap resamples of the Step 1 runs
BOOTSTRAP_SEED = 0

NOTES = {
    "random": "a seeded random permutation: no signal by construction, so its stability is nil "
              "(another seed gives an unrelated order)",
    "weights": "computed from the checkpoint's weights alone: deterministic, the same order every time "
               "(no data, no seed)",
}


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation of two equally shaped arrays (flattened); None where undefined
    (fewer than two values, or either array constant)."""
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(spearmanr(x, y).statistic)
    return None if np.isnan(value) else value


def within_layers(a: np.ndarray, b: np.ndarray) -> float | None:
    """The mean over layers of the Spearman of that layer's heads (layers where it is undefined left
    out); None when it is undefined in every layer."""
    values = [v for row_a, row_b in zip(np.asarray(a), np.asarray(b)) if (v := spearman(row_a, row_b)) is not None]
    return float(np.mean(values)) if values else None


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def agreement(pairs: Sequence[tuple[RunMatrix, RunMatrix]]) -> dict:
    """{"pairs", "spearman", "spearman_within_layers"}: the mean over the pairs of runs (None where no
    pair defines it)."""
    matrices = [(np.asarray(a.matrix), np.asarray(b.matrix)) for a, b in pairs]
    return {"pairs": len(pairs),
            "spearman": _mean([spearman(a, b) for a, b in matrices]),
            "spearman_within_layers": _mean([within_layers(a, b) for a, b in matrices])}


def seed_pairs(runs: Sequence[RunMatrix]) -> list[tuple[RunMatrix, RunMatrix]]:
    """Every two runs of the same dataset with different seeds."""
    return [(a, b) for a, b in itertools.combinations(runs, 2) if a.dataset == b.dataset and a.seed != b.seed]


def dataset_pairs(runs: Sequence[RunMatrix]) -> list[tuple[RunMatrix, RunMatrix]]:
    """Every two runs of the same seed on different datasets."""
    return [(a, b) for a, b in itertools.combinations(runs, 2) if a.seed == b.seed and a.dataset != b.dataset]


def bottom_k_frequencies(runs: Sequence[RunMatrix], k_values: Sequence[int], resamples: int = RESAMPLES,
                         seed: int = BOOTSTRAP_SEED) -> dict[int, np.ndarray]:
    """{k: (layers x heads) share of the bootstrap resamples in which the head is among the k least
    important}. A resample draws len(runs) runs with replacement (`np.random.default_rng(seed)`) and
    ranks their mean matrix as the order itself is ranked (`rank_heads`, ties included)."""
    if not runs:
        raise ValueError("the bootstrap needs at least one run")
    matrices = np.array([r.matrix for r in runs], dtype=np.float64)
    shape = matrices.shape[1:]
    n = int(np.prod(shape))
    counts = {int(k): np.zeros(n) for k in k_values}
    rng = np.random.default_rng(seed)
    rank = np.empty(n, dtype=int)
    for _ in range(resamples):
        ranked = rank_heads(matrices[rng.integers(0, len(runs), size=len(runs))].mean(axis=0))
        rank[[layer * shape[1] + head for layer, head in ranked]] = np.arange(n)
        for k, count in counts.items():
            count += rank >= n - k  # among the k least important (the last k of the order)
    return {k: (count / resamples).reshape(shape) for k, count in counts.items()}


def order_stability(order: Order, k_values: Sequence[int], resamples: int = RESAMPLES,
                    seed: int = BOOTSTRAP_SEED) -> dict:
    """The stability part of an order's summary entry (`summary.Stability` as JSON): for a Step 1
    order, the number of runs, the agreement between seeds and between datasets, and the bootstrap
    of the k least important heads for every k > 0 of `k_values`; for a random or weights order
    (or one without runs) a note saying why nothing is measured."""
    if order.kind in NOTES:
        return {"note": NOTES[order.kind]}
    if not order.runs:
        return {"note": "no per-run matrices recorded: nothing to compare"}
    ks = sorted({int(k) for k in k_values if 0 < int(k) < len(order.ranked)})
    frequencies = bottom_k_frequencies(order.runs, ks, resamples, seed)
    bottom_k = {}
    for k in ks:
        least = order.ranked[len(order.ranked) - k:]
        bottom_k[str(k)] = {"agreement": float(np.mean([frequencies[k][l, h] for l, h in least])),
                            "frequency": frequencies[k].tolist()}
    return {"runs": len(order.runs), "seeds": agreement(seed_pairs(order.runs)),
            "datasets": agreement(dataset_pairs(order.runs)),
            "bootstrap": {"resamples": resamples, "seed": seed, "bottom_k": bottom_k}}


__all__ = ["BOOTSTRAP_SEED", "NOTES", "RESAMPLES", "agreement", "bottom_k_frequencies", "dataset_pairs",
           "order_stability", "seed_pairs", "spearman", "within_layers"]
