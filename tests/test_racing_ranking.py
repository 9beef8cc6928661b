"""A race's final ranking (racing.Race._compare): candidates dropped early are told shift-adjusted
means, so the race's choice is invariant to a constant added to every candidate's F1 on one
(dataset, seed) block, as the paper's full-seed rule is (seeds fix the splits, so such blocks are
the largest effect in real grids)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from headprune.racing import Race, by_fidelity
from headprune.search import H1Strategy, H3Strategy, run_strategies

SEEDS = [1, 2, 3, 4, 5]


def _rng(*key: object) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little"))


# 4 candidates (k = 0..3), datasets x and y, 5 seeds: k = 2 and k = 3 are dropped after seed 3.
# k = 0 and k = 1 tie at rank sum 3 (k = 1 chosen: more heads pruned). Moving every candidate on
# x, seeds 4-5, by -0.125 puts k = 3's 3-seed mean (0.76) between k = 0 and k = 1 on x if it is
# told raw: k = 1's rank sum then grows by one and k = 0 would be chosen.
_X = {1: (.84, .80, .76, .75), 2: (.80, .81, .79, .76), 3: (.82, .79, .79, .77), 4: (.81, .80, .79, .76),
      5: (.83, .80, .77, .76)}
_Y = {1: (.80, .82, .78, .50), 2: (.81, .80, .80, .50), 3: (.79, .81, .79, .50), 4: (.80, .81, .79, .50),
      5: (.80, .81, .79, .50)}


def _example_race(shift: float) -> dict:
    def by_seed(requests):
        return [{"x": _X, "y": _Y}[ds][s][len(p)] + (shift if ds == "x" and s >= 4 else 0.0)
                for p, ds, s, *_ in requests]

    order = [(0, h) for h in range(4)]
    return run_strategies({"h1": Race(H1Strategy(order, ["x", "y"]), SEEDS)}, by_seed)["h1"]


def test_a_shift_of_one_block_after_the_drops_keeps_the_choice() -> None:
    plain, shifted = _example_race(0.0), _example_race(-0.125)
    dropped = {(e["n_pruned"], e["after_seeds"]) for e in plain["racing"]["eliminations"]}
    assert dropped == {(2, 3), (3, 3)} == {(e["n_pruned"], e["after_seeds"])
                                           for e in shifted["racing"]["eliminations"]}
    assert plain["chosen_k"] == shifted["chosen_k"] == 1
    # The dropped candidate is told its 3-seed mean moved by the survivors' offset on x (0 unshifted;
    # the shift's -0.05 on their 5-seed means once shifted), so it stays below both survivors.
    assert plain["scores"]["x"]["3"] == pytest.approx(0.76)
    assert shifted["scores"]["x"]["3"] == pytest.approx(0.76 - 0.05)
    assert shifted["scores"]["x"]["3"] < min(shifted["scores"]["x"]["0"], shifted["scores"]["x"]["1"])


def _random_grid(index: int, n_heads: int, datasets: list[str]):
    """F1 of (k, dataset, seed) at the full and the low fidelity: a curve over k, block effects per
    (dataset, seed) and candidate noise, all seeded from stable keys."""
    r = _rng("grid", index)
    curve = r.normal(0.8, 0.02, size=n_heads)
    full = {(k, ds, s): curve[k] + r.normal(0, 0.01) for k in range(n_heads) for ds in datasets for s in SEEDS}
    low = {key: value - 0.02 + r.normal(0, 0.01) for key, value in full.items()}
    return full, low


def _shifts(index: int, datasets: list[str], name: str) -> dict:
    r = _rng("shift", name, index)
    return {(ds, s): float(r.normal(0, 0.03)) for ds in datasets for s in SEEDS}


def _evaluator(table: dict, shift: dict):
    def evaluate(requests):
        return [table[(len(p), ds, s)] + shift.get((ds, s), 0.0) for p, ds, s, *_ in requests]
    return evaluate


@pytest.mark.parametrize("screen", [None, "no-adjust"])
def test_random_block_shifts_never_change_a_raced_choice(screen) -> None:
    """Property: over random grids, adding random constants per (dataset, seed) block (at each
    fidelity) changes neither which candidates a race drops nor which one it chooses."""
    datasets = ["x", "y", "z"]
    order = [(layer, head) for layer in range(2) for head in range(4)]
    changed_before = 0
    for index in range(60):
        full, low = _random_grid(index, len(order), datasets)
        results = []
        for shift_full, shift_low in (({}, {}), (_shifts(index, datasets, "full"), _shifts(index, datasets, "low"))):
            race = Race(H1Strategy(order, datasets), SEEDS, screen=screen)
            evaluate = by_fidelity(_evaluator(full, shift_full), _evaluator(low, shift_low))
            results.append(run_strategies({"h1": race}, evaluate)["h1"])
        plain, shifted = results
        drops = [[(e["n_pruned"], e["after_seeds"], e.get("fidelity")) for e in r["racing"]["eliminations"]]
                 for r in results]
        assert drops[0] == drops[1], index
        assert plain["chosen_k"] == shifted["chosen_k"], index
        changed_before += bool(drops[0])
    assert changed_before >= 20  # the property is exercised: most races drop candidates early


def test_random_block_shifts_never_change_a_raced_h3() -> None:
    """The same for H3: its walk's steps and its cross-scoring race are paired by (dataset, seed)."""
    datasets = ["x", "y", "z"]
    order = [(layer, head) for layer in range(2) for head in range(4)]
    for index in range(20):
        full, _ = _random_grid(index, len(order), datasets)
        results = [
            run_strategies({"h3": Race(H3Strategy(order, datasets, group_size=2), SEEDS)},
                           _evaluator(full, shift))["h3"]
            for shift in ({}, _shifts(index, datasets, "full"))
        ]
        assert results[0]["chosen"] == results[1]["chosen"], index
        assert [m["pruned_heads"] for m in results[0]["per_dataset"].values()] == \
            [m["pruned_heads"] for m in results[1]["per_dataset"].values()], index
