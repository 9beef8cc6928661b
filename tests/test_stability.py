"""importance.stability: agreement between Step 1 runs (Spearman over all heads and within layers,
between seeds and between datasets) and the seeded bootstrap of the k least important heads, on
constructed runs."""

from __future__ import annotations

import numpy as np
import pytest

from headprune.importance import Order, RunMatrix, rank_heads
from headprune.importance.stability import (
    NOTES,
    agreement,
    bottom_k_frequencies,
    dataset_pairs,
    order_stability,
    seed_pairs,
    spearman,
    within_layers,
)


def run(dataset: str, seed: int, matrix) -> RunMatrix:
    return RunMatrix(dataset, seed, [list(map(float, row)) for row in matrix])


def step1_order(runs: list[RunMatrix]) -> Order:
    mean = np.mean([r.matrix for r in runs], axis=0)
    return Order(name="OI", ranked=rank_heads(mean), n_layers=mean.shape[0], n_heads=mean.shape[1],
                 matrix=mean.tolist(), runs=runs)


def test_spearman_of_identical_reversed_and_constant_matrices() -> None:
    a = np.array([[0.1, 0.5, 0.3], [0.9, 0.2, 0.7]])
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, 10 * a + 3) == pytest.approx(1.0)  # ranks only
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert within_layers(a, a) == pytest.approx(1.0)
    assert spearman(a, np.zeros_like(a)) is None  # undefined, not NaN
    # Within layers: layer 0 agrees, layer 1 is reversed; layer 2 is constant in one run (left out).
    b = np.array([[1, 2, 3], [3, 2, 1], [5, 5, 5]])
    c = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3]])
    assert within_layers(b, c) == pytest.approx(0.0)
    assert within_layers(np.ones((2, 3)), c[:2]) is None


def test_layer_pattern_without_order_inside_layers() -> None:
    """The pattern the issue saw on MiniLM: runs agree on which layer matters (overall Spearman high)
    while the order inside each layer is unrelated (within-layer Spearman about 0 or below)."""
    first = [[0.10, 0.11, 0.12, 0.13], [0.90, 0.91, 0.92, 0.93]]
    second = [[0.13, 0.12, 0.11, 0.10], [0.93, 0.92, 0.91, 0.90]]
    found = agreement([(run("x", 1, first), run("x", 2, second))])
    assert found["pairs"] == 1
    assert found["spearman"] > 0.5 and found["spearman_within_layers"] == pytest.approx(-1.0)


def test_pairs_of_seeds_and_of_datasets() -> None:
    runs = [run(ds, seed, np.eye(2)) for ds in ("a", "b") for seed in (1, 2, 3)]
    assert sorted((p.dataset, p.seed, q.seed) for p, q in seed_pairs(runs)) == [
        ("a", 1, 2), ("a", 1, 3), ("a", 2, 3), ("b", 1, 2), ("b", 1, 3), ("b", 2, 3)]
    assert sorted((p.seed, p.dataset, q.dataset) for p, q in dataset_pairs(runs)) == [
        (1, "a", "b"), (2, "a", "b"), (3, "a", "b")]


def test_identical_runs_are_perfectly_stable() -> None:
    matrix = [[0.3, 0.1, 0.8], [0.5, 0.9, 0.2]]
    runs = [run(ds, seed, matrix) for ds in ("a", "b") for seed in (1, 2)]
    found = order_stability(step1_order(runs), k_values=[0, 1, 2, 5, 6], resamples=50)
    assert found["runs"] == 4
    for part in ("seeds", "datasets"):
        assert found[part] == {"pairs": 2, "spearman": pytest.approx(1.0), "spearman_within_layers": pytest.approx(1.0)}
    assert set(found["bootstrap"]["bottom_k"]) == {"1", "2", "5"}  # k = 0 prunes nothing; k = 6 would prune all
    for k, part in found["bootstrap"]["bottom_k"].items():
        assert part["agreement"] == 1.0
        frequency = np.array(part["frequency"])
        assert set(frequency.ravel()) <= {0.0, 1.0} and frequency.sum() == int(k)
    assert np.array(found["bootstrap"]["bottom_k"]["1"]["frequency"])[0, 1] == 1.0  # 0.1: the least important


def test_bootstrap_frequencies_of_two_disagreeing_runs() -> None:
    """Run A puts head (0, 0) last, run B head (0, 1); their mean puts (0, 1) last. Resampling two
    runs with replacement gives AA a quarter of the time, BB a quarter, AB or BA half: (0, 0) is the
    least important in a quarter of the resamples, (0, 1) in three quarters."""
    runs = [run("a", 1, [[0, 5, 9, 9]]), run("b", 1, [[6, 0, 9, 9]])]
    frequencies = bottom_k_frequencies(runs, [1, 2], resamples=4000, seed=3)
    assert frequencies[1][0, 0] == pytest.approx(0.25, abs=0.03)
    assert frequencies[1][0, 1] == pytest.approx(0.75, abs=0.03)
    assert frequencies[1][0, 0] + frequencies[1][0, 1] == pytest.approx(1.0)
    np.testing.assert_array_equal(frequencies[2], [[1.0, 1.0, 0.0, 0.0]])  # either way both go first
    again = bottom_k_frequencies(runs, [1, 2], resamples=4000, seed=3)
    np.testing.assert_array_equal(again[1], frequencies[1])  # seeded
    order = step1_order(runs)
    assert order.ranked[-1] == (0, 1)
    found = order_stability(order, [1, 2], resamples=4000, seed=3)
    assert found["bootstrap"]["bottom_k"]["1"]["agreement"] == pytest.approx(frequencies[1][0, 1])
    assert found["datasets"]["pairs"] == 1 and found["seeds"] == {"pairs": 0, "spearman": None,
                                                                 "spearman_within_layers": None}


def test_random_and_weights_orders_are_not_measured() -> None:
    random = Order(name="A1", ranked=[(0, 1), (0, 0)], n_layers=1, n_heads=2, kind="random")
    weights = Order(name="magnitude", ranked=[(0, 1), (0, 0)], n_layers=1, n_heads=2, kind="weights",
                    matrix=[[1.0, 2.0]])
    assert order_stability(random, [1]) == {"note": NOTES["random"]}
    assert "nil" in NOTES["random"] and "deterministic" in NOTES["weights"]
    assert order_stability(weights, [1]) == {"note": NOTES["weights"]}
