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
- Pairwise between orders: a paired t-test over the (dataset, seed) pairs of the per-seed mean F1
  over k, with Holm's correction for the number of pairs.

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
    difference is the same (no spread), the evidence is its sign: p = 0 above -margin, else 1."""
    d = np.subtract(x, y, dtype=float) + margin
    if np.allclose(d, d[0], rtol=0.0, atol=1e-12):
        return 0.0 if d[0] > 0 else 1.0
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(ttest_1samp(d, 0.0, alternative="greater").pvalue)


def largest_safe_k(curve: SeedCurve, complete: Sequence[float | None], alpha: float = 0.05,
                   margin: float = DEFAULT_SAFE_K_MARGIN) -> int | None:
    """The largest k of `curve` shown non-inferior to `complete` (the complete model's per-seed F1,
    same seeds; None where a seed was not scored) at `margin`: the k in increasing order, each a
    one-sided paired t-test (`_p_non_inferior`) at `alpha`, the sequence stopping at the first k that
    fails or lacks a seed the complete model has (fixed-sequence testing: the family-wise error is
    alpha). None with fewer than two such seeds, or when the first k fails."""
    seeds = [i for i, c in enumerate(complete) if c is not None]
    if len(seeds) < 2:
        return None
    safe = None
    for k in sorted(curve, key=int):
        scores = curve[k]
        if len(scores) != len(complete):
            raise ValueError(f"k = {k}: {len(scores)} per-seed scores against the complete model's {len(complete)}")
        if any(scores[i] is None for i in seeds):
            break
        x, y = [float(scores[i]) for i in seeds], [float(complete[i]) for i in seeds]
        if not _p_non_inferior(x, y, margin) < alpha:
            break
        safe = int(k)
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
                   alpha: float = 0.05, margin: float = DEFAULT_SAFE_K_MARGIN) -> dict:
    """Every order's H1 curves against each other and the complete model.

    `curves[order][dataset][str(k)]`: per-seed F1 (the same seeds, in the same order, everywhere;
    None where a seed was not scored); `complete[dataset]`: the complete model's per-seed F1, same
    seeds (may lack a dataset: no safe k there). Returns {"orders": {order: {"area": {dataset: mean
    F1 over k}, "mean_area" (below), "safe_k": {dataset: largest k not significantly
    below CM, or None}}}, "pairs": [{"a", "b", "difference" (mean over (dataset, seed) of a's area
    minus b's), "n", "p_value", "p_holm"}], "seeds": {dataset: how many seeds the areas are over},
    "ks": {dataset: the k compared}, "best", "alpha", "margin"}. A dataset where no seed was scored in every
    common cell is left out. `mean_area` is the mean over every (dataset, seed) compared, the same
    pairs the tests difference, so that the ranking and the pairs agree in sign."""
    orders = list(curves)
    datasets = list(dict.fromkeys(ds for per_ds in curves.values() for ds in per_ds))
    datasets = [ds for ds in datasets if common_ks(curves, ds)]
    per_seed: dict[str, list[float]] = {o: [] for o in orders}  # area of each (dataset, seed), paired
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
            per_seed[order] += areas
            out[order]["area"][ds] = float(np.mean(areas))
            out[order]["safe_k"][ds] = (largest_safe_k(curves[order][ds], cm, alpha, margin)
                                        if cm is not None and len(cm) == n else None)
    for order in orders:
        out[order]["mean_area"] = float(np.mean(per_seed[order])) if per_seed[order] else None
    pairs = []
    for a, b in itertools.combinations(orders, 2):
        x, y = per_seed[a], per_seed[b]
        pairs.append({"a": a, "b": b, "difference": float(np.mean(np.subtract(x, y))) if x else None,
                      "n": len(x), "p_value": _p_two_sided(x, y) if len(x) > 1 else math.nan})
    for pair, adjusted in zip(pairs, holm([p["p_value"] for p in pairs])):
        pair["p_holm"] = adjusted
    ranked = sorted((o for o in orders if out[o]["mean_area"] is not None), key=lambda o: -out[o]["mean_area"])
    return {"orders": out, "pairs": pairs, "seeds": used, "ks": compared, "best": ranked[0] if ranked else None,
            "alpha": alpha, "margin": margin}


def answer(comparison: Mapping) -> str:
    """One sentence: the order with the highest mean F1 over k, and which orders it is significantly
    above (Holm-adjusted paired t-tests), or that none is."""
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
    if not any(not math.isnan(p["p_value"]) for p in comparison["pairs"]):
        return head + "; the per-seed scores allow no significance test."
    if len(below) == len(others):
        return head + f", significantly above every other order (paired t-tests, Holm-adjusted p < {alpha})."
    if below:
        level = [o for o in others if o not in below]
        return (head + f"; significantly above {', '.join(below)} but not distinguishable from "
                f"{', '.join(level)} (paired t-tests, Holm-adjusted p < {alpha}).")
    return (f"No order prunes significantly better than the others: the highest mean F1 over k is {best}'s "
            f"({area:.2f}, {lead:.2f} points above {second}), within noise of every other order "
            f"(paired t-tests, Holm-adjusted p >= {alpha}).")


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
           "curve_area", "holm", "largest_safe_k"]
