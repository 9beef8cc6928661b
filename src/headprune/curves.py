"""Which order prunes best: pure functions over the H1 curves of several orders (F1 against k, the
number of least important heads pruned), with significance.

- The mean F1 over k of an order on a dataset: the area under its H1 curve (trapezoids) divided by
  the k range, so a curve that stays high while more heads go scores high.
- The safe k: the largest k shown non-inferior to the complete model at a margin (`safe_k_margin`,
  1 F1 point by default), paired by seed (the seed fixes the split). Each k's one-sided paired t-test
  asks whether its F1 is above the complete model's minus the margin; the k are tested in increasing
  order as a fixed sequence, stopping at the first that fails, which controls the family-wise error
  at alpha without a correction (Maurer, Hothorn & Lehmacher 1995; Wiens 2003). A k not scored on
  every seed the complete model was (a candidate a race dropped early) ends the sequence: its few
  seeds cannot show non-inferiority. "Not significantly below" would be absence of evidence (with 5
  seeds most k pass), and the largest k passing it, over many uncorrected and non-monotone tests,
  could sit above a k significantly below.
- Pairwise between orders: a paired t-test over the datasets of each dataset's mean F1 over k (over
  its seeds), with Holm's correction for the number of pairs. The dataset is the unit: its seeds
  share it, so they are not independent draws of an order's effect (`compare_orders`).

Curves are compared on the k values that every order has per-seed scores for, on each dataset
(identical grids unless a search stopped some candidates early), over the seeds every one of those
cells was scored with: a race (`[step2] racing`) scores the candidates it drops with fewer seeds
(null in the per-seed lists), but every candidate with its first ones, so the curves stay whole and
paired. A screened race (`racing_screen`) scores the candidates it drops at the low fidelity with
no full-fidelity seed at all: those k are missing, and the comparison is over fewer k (`ks`).
Inputs are plain mappings, read from the summary by the report."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import ttest_1samp, ttest_rel

DEFAULT_SAFE_K_MARGIN = 0.01  # F1 (1 point): how far below the complete model a k may be and still be safe
_ROUNDING = 1e-12  # F1 differences closer than this are equal (scores are means of a few hundred F1s)
SeedCurve = Mapping[str, Sequence[float | None]]  # {str(k): per-seed F1, None where a seed was not scored}


def curve_area(points: Mapping[int, float]) -> float:
    """The mean F1 over k: the trapezoid area under the curve {k: F1} divided by its k range (the
    value itself for a single k)."""
    if not points:
        raise ValueError("a curve needs at least one point")
    ks = sorted(points)
    if len(ks) == 1:
        return float(points[ks[0]])
    values = [float(points[k]) for k in ks]
    area = sum((b - a) * (fa + fb) / 2 for a, b, fa, fb in zip(ks, ks[1:], values, values[1:]))
    return area / (ks[-1] - ks[0])


def _p_two_sided(x: Sequence[float], y: Sequence[float]) -> float:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(ttest_rel(x, y).pvalue)


def _p_non_inferior(x: Sequence[float], y: Sequence[float], margin: float) -> float:
    """One-sided paired t-test of H0 mean(x - y) <= -margin against mean(x - y) > -margin. Where every
    difference is the same (no spread, where the t-test is undefined), the evidence is where it lies:
    p = 0 above -margin, 1 at or below it (within float rounding, so that a difference of exactly the
    margin, in H0, is not called non-inferior because x - y + margin rounded to 1e-16)."""
    d = np.subtract(x, y, dtype=float) + margin
    if np.ptp(d) <= _ROUNDING:
        return 0.0 if d[0] > _ROUNDING else 1.0
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(ttest_1samp(d, 0.0, alternative="greater").pvalue)


def largest_safe_k(curve: SeedCurve, complete: Sequence[float | None], ks: Sequence[int], alpha: float = 0.05,
                   margin: float = DEFAULT_SAFE_K_MARGIN) -> int | None:
    """The largest k shown non-inferior to `complete` (the complete model's per-seed F1, same seeds;
    None where a seed was not scored) at `margin`: the k of `ks` (the grid the search was to score,
    e.g. H1's `k_values`) in increasing order, each a one-sided paired t-test (`_p_non_inferior`) of
    `curve[str(k)]` at `alpha`, the sequence stopping at the first k that fails, is missing from
    `curve` (a screened race scored it at the low fidelity only) or lacks a seed the complete model
    has (fixed-sequence testing: the family-wise error is alpha only if no k is skipped). None with
    fewer than two such seeds, or when the first k fails."""
    seeds = [i for i, c in enumerate(complete) if c is not None]
    if len(seeds) < 2:
        return None
    safe = None
    for k in sorted(int(k) for k in ks):
        scores = curve.get(str(k))
        if scores is None:
            break
        if len(scores) != len(complete):
            raise ValueError(f"k = {k}: {len(scores)} per-seed scores against the complete model's {len(complete)}")
        if any(scores[i] is None for i in seeds):
            break
        x, y = [float(scores[i]) for i in seeds], [float(complete[i]) for i in seeds]
        if not _p_non_inferior(x, y, margin) < alpha:
            break
        safe = k
    return safe


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of p values (nan stays nan, and is not counted)."""
    defined = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(defined):
        running = max(running, min(1.0, (len(defined) - rank) * p))
        out[i] = running
    return out


def common_ks(curves: Mapping[str, Mapping[str, SeedCurve]], dataset: str) -> list[str]:
    """The k values (as written, str) every order has per-seed scores for on `dataset`, by k."""
    sets = [set(per_ds.get(dataset, {})) for per_ds in curves.values()]
    return sorted(set.intersection(*sets) if sets else set(), key=int)


def compare_orders(curves: Mapping[str, Mapping[str, SeedCurve]], complete: Mapping[str, Sequence[float | None]],
                   k_values: Mapping[str, Sequence[int]], alpha: float = 0.05,
                   margin: float = DEFAULT_SAFE_K_MARGIN) -> dict:
    """Every order's H1 curves against each other and the complete model.

    `curves[order][dataset][str(k)]`: per-seed F1 (the same seeds, in the same order, everywhere;
    None where a seed was not scored); `complete[dataset]`: the complete model's per-seed F1, same
    seeds (may lack a dataset: no safe k there); `k_values[order]`: the k its search was to score
    (the safe k's fixed sequence stops at one missing from the curve). Returns {"orders": {order:
    {"area": {dataset: mean F1 over k, over the dataset's seeds}, "mean_area" (the mean of those over
    the datasets), "safe_k": {dataset: largest k shown non-inferior to CM, or None}}}, "pairs": [{"a",
    "b", "difference" (mean over the datasets of a's area minus b's), "n" (datasets), "p_value",
    "p_holm"}], "seeds": {dataset: how many seeds the areas are over}, "ks": {dataset: the k
    compared}, "best", "alpha", "margin"}. A dataset where no seed was scored in every common cell is
    left out.

    The unit of the pairwise tests is the dataset: a two-sided paired t-test (`scipy.stats.ttest_rel`)
    over the datasets' areas, Holm over the pairs. A dataset's seeds share its data, its level and
    how each order suits it, so they are not independent draws of an order's effect; pairing over
    (dataset, seed) would count each dataset's order-by-dataset effect once per seed and overstate
    the evidence. With the dataset a random block, the order-by-dataset interaction is the error
    of a comparison meant to hold beyond these datasets; for two orders that is this test."""
    orders = list(curves)
    datasets = list(dict.fromkeys(ds for per_ds in curves.values() for ds in per_ds))
    datasets = [ds for ds in datasets if common_ks(curves, ds)]
    out: dict[str, dict] = {o: {"area": {}, "safe_k": {}} for o in orders}
    used: dict[str, int] = {}
    compared: dict[str, list[int]] = {}
    for ds in datasets:
        ks = common_ks(curves, ds)
        n_seeds = {len(scores) for o in orders for scores in curves[o][ds].values()}
        if len(n_seeds) != 1:
            raise ValueError(f"{ds}: the orders' curves have different numbers of seeds")
        (n,) = n_seeds
        seeds = [s for s in range(n) if all(curves[o][ds][k][s] is not None for o in orders for k in ks)]
        if not seeds:
            continue
        used[ds] = len(seeds)
        compared[ds] = [int(k) for k in ks]
        cm = complete.get(ds)
        for order in orders:
            areas = [curve_area({int(k): float(curves[order][ds][k][seed]) for k in ks}) for seed in seeds]
            out[order]["area"][ds] = float(np.mean(areas))
            out[order]["safe_k"][ds] = (largest_safe_k(curves[order][ds], cm, k_values[order], alpha, margin)
                                        if cm is not None and len(cm) == n else None)
    for order in orders:
        areas = [out[order]["area"][ds] for ds in used]
        out[order]["mean_area"] = float(np.mean(areas)) if areas else None
    pairs = []
    for a, b in itertools.combinations(orders, 2):
        x, y = [out[a]["area"][ds] for ds in used], [out[b]["area"][ds] for ds in used]
        pairs.append({"a": a, "b": b, "difference": float(np.mean(np.subtract(x, y))) if x else None,
                      "n": len(x), "p_value": _p_two_sided(x, y) if len(x) > 1 else math.nan})
    for pair, adjusted in zip(pairs, holm([p["p_value"] for p in pairs])):
        pair["p_holm"] = adjusted
    ranked = sorted((o for o in orders if out[o]["mean_area"] is not None), key=lambda o: -out[o]["mean_area"])
    return {"orders": out, "pairs": pairs, "seeds": used, "ks": compared, "best": ranked[0] if ranked else None,
            "alpha": alpha, "margin": margin}


def pairs_method(comparison: Mapping) -> str:
    """What the pairwise tests of `compare_orders` are, on how many independent units, corrected how."""
    n, tested = len(comparison["seeds"]), len(comparison["pairs"])
    return (f"two-sided paired t-tests over the {n} dataset{'' if n == 1 else 's'}, each dataset's mean F1 over "
            f"k over its seeds one unit, Holm over the {tested} pair{'' if tested == 1 else 's'}, "
            f"alpha {comparison['alpha']}")


def answer(comparison: Mapping) -> str:
    """One sentence: the order with the highest mean F1 over k, which orders it is significantly
    above (`compare_orders`'s tests, named with their unit and correction), or that none is, and
    then how large a difference these few datasets could have shown."""
    from scipy.stats import t as student

    best = comparison["best"]
    if best is None:
        return "No order has H1 scores to compare."
    orders = comparison["orders"]
    alpha = comparison["alpha"]
    others = [o for o in orders if o != best and orders[o]["mean_area"] is not None]
    area = 100 * orders[best]["mean_area"]
    if not others:
        return f"Only {best} has H1 scores (mean F1 over k {area:.2f})."
    below = []
    for pair in comparison["pairs"]:
        if best in (pair["a"], pair["b"]) and not math.isnan(pair["p_holm"]) and pair["p_holm"] < alpha:
            other = pair["b"] if pair["a"] == best else pair["a"]
            if (pair["difference"] > 0) == (pair["a"] == best):
                below.append(other)
    second = max(others, key=lambda o: orders[o]["mean_area"])
    lead = area - 100 * orders[second]["mean_area"]
    head = f"{best} prunes best here: mean F1 over k {area:.2f}, {lead:.2f} points above the next order ({second})"
    n = len(comparison["seeds"])
    if n < 2:
        return (head + f"; with {n} dataset nothing is tested: its seeds share the dataset, so they are not "
                "independent units, and a paired test over datasets needs two or more.")
    method = pairs_method(comparison)
    if len(below) == len(others):
        return head + f", significantly above every other order ({method})."
    if below:
        level = [o for o in others if o not in below]
        return (head + f"; significantly above {', '.join(below)} but not distinguishable from "
                f"{', '.join(level)} ({method}).")
    # Holm rejects nothing unless the smallest p is below alpha / pairs: the |t| that takes on n - 1
    # degrees of freedom says how consistent over so few datasets a difference would have had to be.
    needed = float(student.isf(alpha / len(comparison["pairs"]) / 2, n - 1))
    return (f"No order prunes significantly better than the others: the highest mean F1 over k is {best}'s "
            f"({area:.2f}, {lead:.2f} points above {second}), within noise of every other order ({method}; "
            f"with {n} datasets the strongest pair would have needed |t| >= {needed:.1f} on {n - 1} degree"
            f"{'' if n == 2 else 's'} of freedom).")


def against_chance(comparison: Mapping, random_orders: Sequence[str], alpha: float = 0.05) -> dict | None:
    """Where each non-random order falls in the distribution of the random orders' mean F1 over k,
    with datasets as blocks and the orders as the units (`comparison`: `compare_orders`'s result).

    Per dataset, every area is centred on the random orders' mean there (the dataset's level is a
    block effect); an order's effect is its centred area averaged over the datasets. The random
    orders' effects are draws from the null distribution, so a criterion no better than chance is one
    more draw: its effect against theirs is a prediction t-test, t = (m - mean) / (sd * sqrt(1 + 1/R)),
    R - 1 degrees of freedom, one-sided (above chance), Holm-adjusted over the criteria. Also its
    rank among the random orders per dataset and overall (1 = above every random order). The unit
    is the order, not the (dataset, seed): seeds and datasets share every order's permutation, so
    they are not independent draws of it. None with fewer than two random orders."""
    from scipy.stats import t as student

    orders = comparison["orders"]
    randoms = [o for o in random_orders if o in orders and orders[o]["area"]]
    if len(randoms) < 2:
        return None
    datasets = [ds for ds in comparison["ks"] if all(ds in orders[o]["area"] for o in orders)]
    if not datasets:
        return None
    centre = {ds: float(np.mean([orders[o]["area"][ds] for o in randoms])) for ds in datasets}

    def effect(order: str) -> float:
        return float(np.mean([orders[order]["area"][ds] - centre[ds] for ds in datasets]))

    null = np.array([effect(o) for o in randoms])
    spread = float(np.std(null, ddof=1))
    criteria = [o for o in orders if o not in randoms]
    rows: dict[str, dict] = {}
    for order in criteria:
        m = effect(order)
        if spread > 0:
            t_value = (m - float(null.mean())) / (spread * math.sqrt(1 + 1 / len(randoms)))
            p_value = float(student.sf(t_value, len(randoms) - 1))
        else:
            t_value, p_value = math.nan, math.nan
        rows[order] = {
            "effect": m, "t": t_value, "p_value": p_value,
            "rank": 1 + int(np.sum(null > m)),
            "rank_by_dataset": {ds: 1 + sum(orders[o]["area"][ds] > orders[order]["area"][ds] for o in randoms)
                                for ds in datasets},
        }
    for order, adjusted in zip(criteria, holm([rows[o]["p_value"] for o in criteria])):
        rows[order]["p_holm"] = adjusted
    return {"random_orders": randoms, "datasets": datasets, "null_effects": dict(zip(randoms, null.tolist())),
            "null_sd": spread, "criteria": rows, "alpha": alpha}


def chance_sentence(chance: Mapping) -> str:
    """One sentence per criterion: its place among the random orders, and whether it beats chance."""
    n = len(chance["random_orders"])
    alpha = chance["alpha"]
    parts = []
    for order, row in sorted(chance["criteria"].items(), key=lambda item: -item[1]["effect"]):
        place = (f"{order}: {100 * row['effect']:+.2f} points against the random orders' mean, "
                 f"rank {row['rank']} of {n + 1}")
        adjusted = row["p_holm"]
        above = not math.isnan(adjusted) and adjusted < alpha
        verdict = "above chance" if above else "not distinguishable from chance"
        parts.append(f"{place} ({verdict}, p = {adjusted:.3g} Holm)" if not math.isnan(adjusted) else place)
    return (f"Against {n} random orders (the null distribution of the mean F1 over k; datasets as blocks, "
            f"the order as the unit, one-sided prediction t-tests, Holm over {len(chance['criteria'])} "
            f"criteria, alpha {alpha}): " + "; ".join(parts) + ".")


__all__ = ["DEFAULT_SAFE_K_MARGIN", "against_chance", "answer", "chance_sentence", "common_ks", "compare_orders",
           "curve_area", "holm", "largest_safe_k", "pairs_method"]
