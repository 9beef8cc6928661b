"""curves: the mean F1 over k of an H1 curve, the largest k not significantly below the complete
model, Holm's correction, and the pairwise comparison of orders with its one-sentence answer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from headprune.curves import answer, common_ks, compare_orders, curve_area, holm, largest_safe_k

SEEDS = 5
DATASETS = ("person", "hobbit", "movie", "SemEval18")


def _grids(curves: dict) -> dict[str, list[int]]:
    """Each order's k grid, where its curves hold every k it was to score."""
    return {o: sorted({int(k) for curve in per_ds.values() for k in curve}) for o, per_ds in curves.items()}


def test_curve_area_is_the_trapezoid_mean_over_the_k_range() -> None:
    assert curve_area({0: 0.8, 10: 0.6}) == pytest.approx(0.7)
    # Uneven steps weigh by their width: (0.9 + 0.7) / 2 * 2 + (0.7 + 0.7) / 2 * 6 = 5.8 over 8.
    assert curve_area({8: 0.7, 0: 0.9, 2: 0.7}) == pytest.approx(5.8 / 8)
    assert curve_area({12: 0.42}) == 0.42
    with pytest.raises(ValueError):
        curve_area({})


def test_the_safe_k_is_the_last_k_of_a_fixed_sequence_of_non_inferiority_tests() -> None:
    complete = [0.80, 0.82, 0.79, 0.81, 0.80]
    noise = [0.004, -0.003, 0.002, -0.004, 0.001]
    curve = {
        "0": complete,
        "6": [c + n for c, n in zip(complete, noise)],  # within noise: non-inferior at 1 point
        "12": [c + 0.02 for c in complete],  # above
        "18": [c - 0.05 + n for c, n in zip(complete, noise)],  # clearly below: the sequence stops here
        "24": [c + 0.01 - n for c, n in zip(complete, noise)],  # level again, after the dip: never reached
    }
    assert largest_safe_k(curve, complete, [0, 6, 12, 18, 24]) == 12
    # A k significantly below the complete model (k = 42) and a larger one not below it (k = 54):
    # "the largest k not significantly below" would say 54; the fixed sequence stops before 42.
    curve = {str(k): [c + n / 2 for c, n in zip(complete, noise)] for k in range(0, 42, 6)}
    curve["42"] = [c - 0.02 + n / 4 for c, n in zip(complete, noise)]
    curve["48"] = [c + n for c, n in zip(complete, noise)]
    curve["54"] = [c + 0.002 - n for c, n in zip(complete, noise)]
    assert largest_safe_k(curve, complete, range(0, 60, 6)) == 36
    # Level within noise but the noise too wide for 5 seeds to show it within 1 point: not safe;
    # a wider margin shows it.
    wide = [0.03, -0.03, 0.02, -0.025, 0.0]
    curve = {"0": complete, "6": [c + n for c, n in zip(complete, wide)]}
    assert largest_safe_k(curve, complete, [0, 6]) == 0
    assert largest_safe_k(curve, complete, [0, 6], margin=0.05) == 6
    # A k whose mean is below by less than the margin, precisely: non-inferior.
    curve = {"6": [c - 0.005 + n / 4 for c, n in zip(complete, noise)]}
    assert largest_safe_k(curve, complete, [6]) == 6 and largest_safe_k(curve, complete, [6], margin=0.0) is None
    assert largest_safe_k({"6": [0.7]}, [0.8], [6]) is None  # one seed: nothing can be tested


def test_a_k_missing_from_the_curve_ends_the_fixed_sequence() -> None:
    """A screened race scores the candidates it drops at the low fidelity only: their k have no
    per-seed scores at all. The fixed sequence must stop there, not skip to the next k (skipping
    spends the family-wise error on a sequence chosen after seeing which k were dropped)."""
    complete = [0.80, 0.82, 0.79, 0.81, 0.80]
    level = [c + n for c, n in zip(complete, [0.004, -0.003, 0.002, -0.004, 0.001])]
    curve = {"0": complete, "6": level, "18": level, "24": level}  # k = 12 screened out
    assert largest_safe_k(curve, complete, [0, 6, 12, 18, 24]) == 6
    assert largest_safe_k(curve, complete, [0, 6, 18, 24]) == 24  # a grid without 12 has no gap
    assert largest_safe_k({"6": level}, complete, [0, 6]) is None  # the first k missing: nothing shown
    # compare_orders passes each order's own grid.
    curves = {"screened": {"d": curve}, "plain": {"d": {**curve, "12": level}}}
    found = compare_orders(curves, {"d": complete}, {"screened": [0, 6, 12, 18, 24], "plain": [0, 6, 12, 18, 24]})
    assert found["orders"]["screened"]["safe_k"] == {"d": 6} and found["orders"]["plain"]["safe_k"] == {"d": 24}
    assert found["ks"] == {"d": [0, 6, 18, 24]}  # the areas are over the common k


def test_no_spread_decides_non_inferiority_by_where_the_difference_lies() -> None:
    """Every paired difference the same (the t-test undefined): p = 0 above -margin, 1 at or below
    it, whatever the sign, including a difference of exactly the margin that float rounding puts
    1e-16 above it (0.81 - 0.82 + 0.01)."""
    from headprune.curves import _p_non_inferior

    complete = [0.82] * 5
    assert _p_non_inferior([0.82] * 5, complete, 0.01) == 0.0  # identical: inside the margin
    assert _p_non_inferior([0.815] * 5, complete, 0.01) == 0.0  # half a point below: inside
    assert _p_non_inferior([0.83] * 5, complete, 0.01) == 0.0  # above
    assert _p_non_inferior([0.80] * 5, complete, 0.01) == 1.0  # two points below: outside
    assert _p_non_inferior([0.81] * 5, complete, 0.01) == 1.0  # exactly at the margin: H0 holds
    assert _p_non_inferior([0.805] * 5, complete, 0.0) == 1.0  # below, with no margin
    varied = [0.80, 0.81, 0.79, 0.80, 0.80]
    assert _p_non_inferior([v - 0.03 for v in varied], varied, 0.01) == 1.0  # constant 3 points below
    assert largest_safe_k({"0": complete, "6": [0.81] * 5, "12": [0.82] * 5}, complete, [0, 6, 12]) == 0


def test_the_fixed_sequence_controls_the_family_wise_error() -> None:
    """Simulation: every k's true difference is exactly at the margin (-1 point; every null hypothesis
    true), 12 k, 5 seeds, seed noise shared by the k: the chance that any k is called safe is at most
    alpha (binomial bound over 2,000 curves); the old rule (any k not significantly below) calls one
    safe nearly always."""
    from scipy.stats import binomtest

    rng = np.random.default_rng(20261207)
    errors = 0
    trials = 2000
    for _ in range(trials):
        complete = list(0.80 + rng.normal(0, 0.01, size=5))
        curve = {str(k): [c - 0.01 + e for c, e in zip(complete, rng.normal(0, 0.01, size=5))]
                 for k in range(6, 78, 6)}
        errors += largest_safe_k(curve, complete, range(6, 78, 6)) is not None
    assert binomtest(errors, trials, 0.05, alternative="greater").pvalue > 0.01, errors / trials


def test_holm_adjusts_in_steps_and_keeps_nan() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.02, math.nan, 0.5])
    assert adjusted[0] == pytest.approx(0.04) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.5)


def _curve(level: float, slope: float, ks=(0, 6, 12, 18), seed: int = 0) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    return {str(k): [float(level - slope * k + rng.normal(0, 0.002)) for _ in range(SEEDS)] for k in ks}


def test_compare_orders_finds_the_order_that_prunes_best() -> None:
    """`good` loses F1 slowly with k, `bad` fast, the random `A1` in between, alike on four datasets:
    `good` has the largest mean F1 over k and is significantly above both others, tested over the
    four datasets (the unit), Holm over the three pairs."""
    curves = {
        "good": {ds: _curve(0.80, 0.0, seed=i) for i, ds in enumerate(DATASETS)},
        "bad": {ds: _curve(0.80, 0.0050, seed=10 + i) for i, ds in enumerate(DATASETS)},
        "A1": {ds: _curve(0.80, 0.0020, seed=20 + i) for i, ds in enumerate(DATASETS)},
    }
    complete = {ds: curves["good"][ds]["0"] for ds in DATASETS}
    for order in curves.values():  # k = 0 is the complete model in every order
        for ds, curve in order.items():
            curve["0"] = complete[ds]
    found = compare_orders(curves, complete, _grids(curves))
    assert found["best"] == "good"
    areas = {name: found["orders"][name]["mean_area"] for name in curves}
    assert areas["good"] > areas["A1"] > areas["bad"]
    assert areas["good"] == pytest.approx(np.mean([found["orders"]["good"]["area"][ds] for ds in DATASETS]))
    assert found["orders"]["good"]["area"]["person"] == pytest.approx(0.80, abs=0.003)
    assert found["orders"]["bad"]["area"]["person"] == pytest.approx(0.80 - 0.005 * 9, abs=0.003)
    assert found["orders"]["good"]["safe_k"] == dict.fromkeys(DATASETS, 18)
    assert found["orders"]["bad"]["safe_k"] == dict.fromkeys(DATASETS, 0)
    pairs = {(p["a"], p["b"]): p for p in found["pairs"]}
    assert set(pairs) == {("good", "bad"), ("good", "A1"), ("bad", "A1")}
    assert pairs[("good", "bad")]["n"] == len(DATASETS) and pairs[("good", "bad")]["difference"] > 0
    assert all(p["p_holm"] < 0.05 for p in found["pairs"])
    sentence = answer(found)
    assert sentence.startswith("good prunes best here: mean F1 over k ")
    assert sentence.endswith(", significantly above every other order (two-sided paired t-tests over the 4 "
                             "datasets, each dataset's mean F1 over k over its seeds one unit, Holm over the 3 "
                             "pairs, alpha 0.05).")


def test_orders_within_noise_are_said_to_be_within_noise() -> None:
    curves = {name: {ds: _curve(0.80, 0.001, seed=10 * s + i) for i, ds in enumerate(DATASETS)}
              for s, name in enumerate(("OI", "A1", "A2"))}
    found = compare_orders(curves, {}, _grids(curves))
    assert all(p["p_holm"] >= 0.05 for p in found["pairs"])
    sentence = answer(found)
    assert sentence.startswith("No order prunes significantly better than the others: the highest mean F1 "
                               f"over k is {found['best']}'s")
    # How consistent a difference had to be: Holm's first step at 0.05 / 3, two-sided, 3 degrees of freedom.
    assert sentence.endswith("(two-sided paired t-tests over the 4 datasets, each dataset's mean F1 over k over "
                             "its seeds one unit, Holm over the 3 pairs, alpha 0.05; with 4 datasets the strongest "
                             "pair would have needed |t| >= 4.9 on 3 degrees of freedom).")
    # One dataset: its seeds are no independent units, so nothing is tested.
    single = compare_orders({o: {"person": per_ds["person"]} for o, per_ds in curves.items()}, {}, _grids(curves))
    assert all(p["n"] == 1 and math.isnan(p["p_value"]) for p in single["pairs"])
    assert answer(single).endswith("; with 1 dataset nothing is tested: its seeds share the dataset, so they are "
                                   "not independent units, and a paired test over datasets needs two or more.")


def test_the_dataset_not_the_seed_is_the_unit_of_the_pairwise_tests() -> None:
    """Seeds share their dataset: an order that suits three datasets and not the fourth, each by the
    same amount on every seed, is 20 consistent (dataset, seed) pairs but only four datasets, one of
    them against it. Paired over (dataset, seed) that is p < 0.001; over the datasets it is not
    significant, and the sentence says what was tested on how many units."""
    shift = {"person": 0.02, "hobbit": 0.02, "movie": 0.02, "SemEval18": -0.01}
    curves = {"A1": {ds: _curve(0.80, 0.001, seed=i) for i, ds in enumerate(DATASETS)}}
    curves["OI"] = {ds: {k: [f + shift[ds] + 0.0005 * (s % 2) for s, f in enumerate(scores)]
                         for k, scores in curve.items()}
                    for ds, curve in curves["A1"].items()}
    found = compare_orders(curves, {}, _grids(curves))
    (pair,) = found["pairs"]
    assert pair["n"] == 4 and pair["difference"] == pytest.approx(-0.0125, abs=0.001)  # A1 minus OI
    from scipy.stats import ttest_1samp, ttest_rel

    assert pair["p_value"] == pytest.approx(ttest_1samp([-v for v in shift.values()], 0.0).pvalue, rel=0.05)
    assert pair["p_value"] > 0.1
    seed_pairs = ttest_rel(*([curve_area({int(k): curves[o][ds][k][s] for k in curves[o][ds]})
                              for ds in DATASETS for s in range(SEEDS)] for o in ("OI", "A1")))
    assert seed_pairs.pvalue < 0.001  # what the (dataset, seed) analysis would have claimed
    assert answer(found).startswith("No order prunes significantly better than the others: the highest mean "
                                    "F1 over k is OI's")
    assert "over the 4 datasets" in answer(found)


def test_pairwise_tests_over_datasets_hold_their_level() -> None:
    """Simulation: two orders with no true difference, but an order-by-dataset effect shared by a
    dataset's seeds (4 datasets, 5 seeds): the pair is called significant at most alpha of the time
    (binomial bound); pairing over the 20 (dataset, seed) cells would far exceed it."""
    from scipy.stats import binomtest

    rng = np.random.default_rng(20261208)
    trials, hits = 1000, 0
    for _ in range(trials):
        curves: dict = {"a": {}, "b": {}}
        for ds in DATASETS:
            level, seed_effect = 0.8 + rng.normal(0, 0.02), rng.normal(0, 0.01, size=SEEDS)
            for order in curves:
                suits = rng.normal(0, 0.01)  # how this order suits this dataset, on every seed
                curves[order][ds] = {str(k): list(level + seed_effect + suits + rng.normal(0, 0.001, size=SEEDS))
                                     for k in (0, 6)}
        (pair,) = compare_orders(curves, {}, _grids(curves))["pairs"]
        hits += pair["p_holm"] < 0.05
    assert binomtest(hits, trials, 0.05, alternative="greater").pvalue > 0.01, hits / trials
    assert hits / trials > 0.02  # and the test is not trivially conservative


def test_curves_are_compared_on_their_common_k() -> None:
    """A k one order lacks (e.g. a candidate stopped early) is left out of every order's area."""
    curves = {"x": {"d": _curve(0.8, 0.001, ks=(0, 6, 12))}, "y": {"d": _curve(0.8, 0.001, ks=(0, 6))}}
    assert common_ks(curves, "d") == ["0", "6"]
    found = compare_orders(curves, {}, {"x": [0, 6, 12], "y": [0, 6]})
    assert found["orders"]["x"]["area"]["d"] == pytest.approx(
        np.mean([curve_area({0: curves["x"]["d"]["0"][s], 6: curves["x"]["d"]["6"][s]}) for s in range(SEEDS)]))
    assert found["orders"]["x"]["safe_k"] == {"d": None}  # no complete model given


def test_raced_curves_are_compared_over_the_seeds_every_cell_was_scored_with() -> None:
    """A race scores a dropped candidate with its first seeds only (None for the others): every k
    stays in the curves, the areas and pairs are over the seeds all cells share, and a dropped
    candidate's safe-k test pairs its own seeds with the complete model's."""
    complete = [0.80, 0.82, 0.79, 0.81, 0.80]
    noise = [0.004, -0.003, 0.002, -0.004, 0.001]
    flat = {str(k): [c + n * (k % 5) for c, n in zip(complete, noise)] for k in (0, 6, 12)}
    falling = {"0": complete, "6": list(flat["6"]),
               "12": [c - 0.10 + n for c, n in zip(complete[:3], noise[:3])] + [None, None],  # dropped after 3
               }
    curves = {"flat": {"d": flat}, "falling": {"d": falling}}
    assert common_ks(curves, "d") == ["0", "6", "12"]
    found = compare_orders(curves, {"d": complete}, _grids(curves))
    assert found["seeds"] == {"d": 3}
    expected = np.mean([curve_area({k: falling[str(k)][s] for k in (0, 6, 12)}) for s in range(3)])
    assert found["orders"]["falling"]["area"]["d"] == pytest.approx(expected)
    (pair,) = found["pairs"]
    assert pair["n"] == 1 and pair["difference"] > 0.02  # flat minus falling, on the one dataset: no test
    assert found["orders"]["falling"]["safe_k"] == {"d": 6}  # k = 12 was dropped early: never safe
    assert found["orders"]["flat"]["safe_k"] == {"d": 12}
    # A dropped candidate is not called safe even where its few seeds are level with the complete model.
    assert largest_safe_k({"6": complete, "12": complete[:3] + [None, None]}, complete, [6, 12]) == 6
    assert largest_safe_k({"6": [0.7, None, None]}, [0.8, 0.8, 0.8], [6]) is None  # no k scored on every seed
    # Where the complete model lacks a seed, the k are tested on the seeds it has.
    assert largest_safe_k({"6": [0.8, 0.7, 0.8]}, [0.8, None, 0.8], [6]) == 6
    assert largest_safe_k({"6": [0.8, 0.8]}, [0.8, None], [6]) is None  # one seed: nothing can be tested
    with pytest.raises(ValueError):
        largest_safe_k({"6": [0.8, 0.8]}, [0.8, 0.8, 0.8], [6])
    found = compare_orders(curves, {"d": [0.80, 0.82, None, 0.81, 0.80]}, _grids(curves))
    assert found["orders"]["flat"]["safe_k"] == {"d": 12} and found["ks"] == {"d": [0, 6, 12]}
    # A dataset whose cells share no seed is left out.
    curves["falling"]["e"] = {"0": [0.8, None], "6": [None, 0.7]}
    curves["flat"]["e"] = {"0": [0.8, 0.8], "6": [0.8, 0.8]}
    assert "e" not in compare_orders(curves, {}, _grids(curves))["seeds"]


def _chance_comparison(rng, criteria: dict[str, float], n_random: int = 10, datasets=("a", "b", "c", "d")) -> dict:
    """`compare_orders`-shaped areas: a level per dataset (block), an effect per order shared by every
    dataset (a permutation is one unit), noise per (order, dataset); criteria get their own effect."""
    level = {ds: 0.78 + rng.normal(0, 0.02) for ds in datasets}
    names = [f"A{i}" for i in range(1, n_random + 1)] + list(criteria)
    shift = {o: criteria.get(o, 0.0) + rng.normal(0, 0.004) for o in names}
    orders = {o: {"area": {ds: level[ds] + shift[o] + rng.normal(0, 0.002) for ds in datasets}} for o in names}
    return {"orders": orders, "ks": {ds: [0, 6] for ds in datasets}}


def test_against_chance_places_a_criterion_among_the_random_orders() -> None:
    from headprune.curves import against_chance, chance_sentence

    rng = np.random.default_rng(7)
    comparison = _chance_comparison(rng, {"good": 0.03, "plain": 0.0})
    randoms = [f"A{i}" for i in range(1, 11)]
    chance = against_chance(comparison, randoms)
    assert chance["random_orders"] == randoms and chance["datasets"] == ["a", "b", "c", "d"]
    good = chance["criteria"]["good"]
    assert good["rank"] == 1 and all(r == 1 for r in good["rank_by_dataset"].values())
    assert good["p_holm"] < 0.01 and good["effect"] == pytest.approx(0.03, abs=0.006)
    sentence = chance_sentence(chance)
    assert sentence.index("good:") < sentence.index("plain:") and "good: +" in sentence
    assert "above chance" in sentence.split("plain:")[0]
    assert against_chance(comparison, ["A1"]) is None  # one random order is no distribution


def test_against_chance_holds_its_level_when_the_criterion_is_one_more_random_order() -> None:
    """Simulation: a criterion drawn like the random orders (same order effect shared by the
    datasets) is called above chance at most alpha of the time (binomial bound); testing on the
    (dataset, seed) or dataset cells as if independent would not be."""
    from scipy.stats import binomtest

    from headprune.curves import against_chance

    rng = np.random.default_rng(20261207)
    randoms = [f"A{i}" for i in range(1, 11)]
    trials, hits = 2000, 0
    for _ in range(trials):
        chance = against_chance(_chance_comparison(rng, {"null": 0.0}), randoms)
        hits += chance["criteria"]["null"]["p_value"] < 0.05
    assert binomtest(hits, trials, 0.05, alternative="greater").pvalue > 0.01, hits / trials
    assert hits / trials > 0.02  # and the test is not trivially conservative
