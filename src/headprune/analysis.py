"""The statistics the report shows beside the scores, computed from a summary's parts (pure).

The pipeline writes them into summary.json, `verify` recomputes them from the store's scores, and
the report only renders them: the generalization check at a glance (`overview`), and "Which order
prunes best" (`order_comparison`): every order's H1 curves compared by `curves.compare_orders`
(mean F1 over k, safe k, paired t-tests with Holm), the criteria placed among the random orders
(`curves.against_chance`), the complete model's band and each order's mean bootstrap agreement."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .curves import against_chance, compare_orders
from .generalize import mean_and_std
from .names import COMPLETE
from .summary import Generalization, H1Result, ModelOverview, OrderComparison, OrderEntry, Summary

SeedCurves = Mapping[str, Mapping[str, Sequence[float | None]]]  # {dataset: {str(k): per-seed F1}}


def complete_of(comparison: Generalization | None) -> dict[str, list[float]]:
    """The complete model's per-seed F1 on each dataset of a G2 comparison (Tables 7-10); {} without one."""
    if comparison is None or COMPLETE not in comparison.models:
        return {}
    return {ds: list(cell.scores) for ds, cell in comparison.models[COMPLETE].items()}


def complete_scores(seed_scores: Mapping[str, SeedCurves | None], step2_complete: Mapping[str, Sequence[float]]
                    ) -> dict[str, list[float | None]]:
    """The complete model's per-seed F1 on each Step 2 dataset: from the G2 comparison
    (`step2_complete`, `complete_of`), else from an order's H1 k = 0 (the complete model in every order)."""
    out: dict[str, list[float | None]] = {ds: list(scores) for ds, scores in step2_complete.items()}
    for per_ds in seed_scores.values():
        for ds, per_k in (per_ds or {}).items():
            if "0" in per_k:
                out.setdefault(ds, list(per_k["0"]))
    return out


def _null(value: float | None) -> float | None:
    """nan (an undefined statistic) as JSON's null."""
    return None if value is None or math.isnan(value) else value


def order_comparison(h1: Mapping[str, H1Result], orders: Mapping[str, OrderEntry],
                     step2_complete: Mapping[str, Sequence[float]], alpha: float, margin: float,
                     seed_scores: Mapping[str, SeedCurves] | None = None) -> OrderComparison | None:
    """"Which order prunes best" from the H1 results of two or more orders (None with fewer).

    `step2_complete`: the complete model's per-seed F1 of the G2 comparison (`complete_of`);
    `seed_scores`: each order's per-seed H1 scores where they are not `h1`'s own (verify passes the
    store's). Without per-seed scores (summaries before schema 4) the mean curves are compared as
    one seed each, untested."""
    if len(h1) < 2:
        return None
    per_seed = {o: (seed_scores or {}).get(o, e.seed_scores) for o, e in h1.items()}
    seeded = all(per_seed.values())
    complete = complete_scores(per_seed, step2_complete)
    curves = ({o: dict(per_seed[o] or {}) for o in h1} if seeded else
              {o: {ds: {k: [v] for k, v in per_k.items()} for ds, per_k in e.scores.items()} for o, e in h1.items()})
    found = compare_orders(curves, complete if seeded else {}, {o: e.k_values for o, e in h1.items()}, alpha, margin)
    randoms = [o for o, e in orders.items() if e.is_random and o in h1]
    chance = against_chance(found, randoms, alpha) if seeded else None
    bands = {}  # the complete model's mean +- std over the seeds it was scored with, on each dataset
    for ds in dict.fromkeys(ds for e in h1.values() for ds in e.scores):
        scored = [s for s in complete.get(ds) or [] if s is not None]
        if scored:
            bands[ds] = dict(zip(("mean", "std"), mean_and_std(scored)))
    agreement = {}
    for order in h1:
        entry = orders.get(order)
        bootstrap = entry.stability.bootstrap if entry and entry.stability else None
        if bootstrap and bootstrap.bottom_k:
            agreement[order] = sum(b.agreement for b in bootstrap.bottom_k.values()) / len(bootstrap.bottom_k)
    pairs = [{**pair, "difference": _null(pair["difference"]), "p_value": _null(pair["p_value"]),
              "p_holm": _null(pair["p_holm"])} for pair in found["pairs"]]
    if chance is not None:
        for row in chance["criteria"].values():
            row.update(t=_null(row["t"]), p_value=_null(row["p_value"]), p_holm=_null(row["p_holm"]))
    return OrderComparison.from_json({
        "seeded": seeded, "orders": found["orders"], "pairs": pairs, "seeds": found["seeds"], "ks": found["ks"],
        "best": found["best"], "alpha": alpha, "margin": margin, "random_orders": randoms,
        "against_chance": chance,
        "complete": bands, "bootstrap_agreement": agreement,
    }, key="order_comparison")


def overview(means: Mapping[str, Mapping[str, float]]) -> dict[str, ModelOverview]:
    """Each model of the generalization check at a glance, from its mean F1 per dataset
    (`means[model][dataset]`): over the datasets it shares with CM, in the order they first appear,
    its mean and CM's, the change in %, and on how many its mean is above CM's. {} without CM."""
    complete = means.get(COMPLETE)
    if complete is None:
        return {}
    datasets = list(dict.fromkeys(ds for per_ds in means.values() for ds in per_ds))
    out = {}
    for name, per_ds in means.items():
        common = [ds for ds in datasets if ds in per_ds and ds in complete]
        if not common:
            continue
        mean = sum(per_ds[ds] for ds in common) / len(common)
        reference = sum(complete[ds] for ds in common) / len(common)
        out[name] = ModelOverview(datasets=len(common), mean=mean, complete_mean=reference,
                                  pct_vs_cm=100.0 * (mean / reference - 1.0) if reference else None,
                                  better_than_cm=sum(per_ds[ds] > complete[ds] for ds in common))
    return out


def analyse(summary: Summary, alpha: float, margin: float) -> None:
    """Fill the summary's statistics from its own parts, as the pipeline does once every score is in:
    `overview` from the generalization check, `order_comparison` from H1 and the G2 comparison (with
    the run's `generalization.alpha` and `safe_k_margin`)."""
    generalization = summary.generalization
    glance = overview({m: {ds: cell.mean for ds, cell in row.items()} for m, row in generalization.models.items()}
                      ) if generalization is not None else {}
    summary.overview = glance or None
    summary.order_comparison = order_comparison(summary.h1 or {}, summary.orders or {},
                                                complete_of(summary.step2_comparison), alpha, margin)


__all__ = ["analyse", "complete_of", "complete_scores", "order_comparison", "overview"]
