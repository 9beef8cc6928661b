"""Generalization check: mean (std) F1 per model and dataset, % vs the complete model, paired t-tests.

Pure functions over per-seed numbers; the scores themselves come from PRUN_ADJ_EVAL elsewhere.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import ttest_rel

from .names import COMPLETE, ModelName

PerSeed = Mapping[str, Mapping[str, Sequence[float]]]


def summarize(scores: PerSeed, reference: str = COMPLETE) -> dict[str, dict[str, dict]]:
    """Per model and dataset: {"mean", "std" (ddof=1; 0.0 for one seed), "scores", "pct_vs_cm"}.

    `scores[model][dataset]` are per-seed F1 values; pct_vs_cm = 100 * (mean / reference mean - 1).
    """
    return _summary_table(scores, reference, ("scores", "mean", "std", "pct_vs_cm"))


def timing_summary(seconds: PerSeed, reference: str = COMPLETE) -> dict[str, dict[str, dict]]:
    """Per model and dataset: {"adjust_seconds", "adjust_mean", "adjust_std", "adjust_pct_vs_cm"}.

    Same rules as `summarize`, for the per-seed wall time of the adjusting step (Table 14).
    """
    return _summary_table(seconds, reference, ("adjust_seconds", "adjust_mean", "adjust_std", "adjust_pct_vs_cm"))


def significance(scores: PerSeed, alpha: float = 0.05) -> list[dict]:
    """Paired t-test (scipy.stats.ttest_rel, by seed) for every pair of models on every dataset.

    Returns one {"dataset", "better", "worse", "p_value"} row per pair with p < alpha, "better"
    being the model with the higher mean. Pairs whose differences are all zero (p is nan) say nothing.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    rows = []
    for ds in _datasets(scores):
        models = [model for model in scores if ds in scores[model]]
        for a, b in itertools.combinations(models, 2):
            x, y = _floats(scores[a][ds]), _floats(scores[b][ds])
            if len(x) != len(y):
                raise ValueError(f"{ds}: {a} has {len(x)} seeds and {b} has {len(y)}; a paired test needs equal")
            p_value = _paired_p(x, y)
            if math.isnan(p_value) or p_value >= alpha:
                continue
            better, worse = (a, b) if np.mean(x) > np.mean(y) else (b, a)
            rows.append({"dataset": ds, "better": better, "worse": worse, "p_value": p_value})
    return rows


def statement(row: Mapping[str, object]) -> str:
    """METHOD.md's notation for a significance row: "{x} > {y}" (x significantly better than y)."""
    return f"{{{row['better']}}} > {{{row['worse']}}}"


def random_order_members(chosen: Mapping[str, tuple[str | None, str | None]], random_orders: set[str]
                         ) -> dict[str, list[str]]:
    """{"MAM<strategy>": [its models]}: the chosen models of each strategy found with a random order.

    `chosen[model] = (order, strategy)`; a strategy with no random-order model has no MAM."""
    members: dict[str, list[str]] = {}
    for strategy in sorted({s for _, s in chosen.values() if s}):
        models = sorted(m for m, (order, s) in chosen.items() if s == strategy and order in random_orders)
        if models:
            members[ModelName.mean_of_random(strategy).label] = models
    return members


def per_seed_means(values: PerSeed, members: Mapping[str, Sequence[str]]) -> dict[str, dict[str, list[float]]]:
    """The "mean over random orders" models (MAMH1, ...) as models with per-seed values: per dataset
    and seed, the mean of the member models' values at that seed (their seeds pair up: the same seed
    fixes the same split). So MAM gets a std over seeds and paired t-tests like any model."""
    out: dict[str, dict[str, list[float]]] = {}
    for name, models in members.items():
        datasets = [ds for ds in _datasets({m: values[m] for m in models}) if all(ds in values[m] for m in models)]
        for ds in datasets:
            rows = [_floats(values[m][ds]) for m in models]
            if len({len(r) for r in rows}) != 1:
                raise ValueError(f"{ds}: the models of {name} have different numbers of seeds")
            out.setdefault(name, {})[ds] = [float(v) for v in np.mean(np.array(rows), axis=0)]
    return out


def comparison(scores: PerSeed, seconds: PerSeed | None = None, reference: str = COMPLETE,
               alpha: float = 0.05) -> dict:
    """One comparison table (Tables 7-10 on G2, 12 and 15 on G3): per model and dataset the F1 summary
    (`summarize`) and, given `seconds`, the adjusting-time summary (`timing_summary`); beside them
    "significance", the paired t-tests between every two models (`significance`)."""
    table = summarize(scores, reference=reference)
    timing = timing_summary(seconds, reference=reference) if seconds is not None else {}
    out: dict = {m: {ds: {**cell, **timing.get(m, {}).get(ds, {})} for ds, cell in row.items()}
                 for m, row in table.items()}
    out["significance"] = significance(scores, alpha=alpha)
    return out


def random_means(
    per_order: Mapping[str, Mapping[str, float]],
    reference: Mapping[str, float],
    n_pruned: Mapping[str, int] | None = None,
) -> dict[str, object]:
    """The "mean over random orders" model (MAMH1, ...): combine the mean F1 of MA1H1, MA2H1, ...

    `per_order[model][dataset]` is that model's mean F1; `reference[dataset]` the complete model's
    mean. Returns {dataset: {"mean" (mean of the models' means), "std" (across models, ddof=1;
    0.0 for one), "pct_vs_cm"}} plus "n_pruned" (mean heads pruned) when `n_pruned` is given.
    """
    models = list(per_order)
    if not models:
        raise ValueError("random_means needs at least one model")
    result: dict[str, object] = {}
    for ds in _datasets(per_order):
        missing = [model for model in models if ds not in per_order[model]]
        if missing:
            raise ValueError(f"{ds}: no score for {missing}")
        if ds not in reference:
            raise ValueError(f"{ds}: no reference (complete model) score")
        mean, std = mean_and_std([per_order[model][ds] for model in models])
        result[ds] = {"mean": mean, "std": std, "pct_vs_cm": _pct(mean, float(reference[ds]))}
    if n_pruned is not None:
        result["n_pruned"] = float(np.mean([n_pruned[model] for model in models]))
    return result


def _summary_table(values: PerSeed, reference: str, keys: tuple[str, str, str, str]) -> dict[str, dict[str, dict]]:
    """{model: {dataset: {keys[0]: per-seed values, keys[1]: mean, keys[2]: std, keys[3]: % vs reference}}}."""
    if reference not in values:
        raise ValueError(f"no reference model {reference!r} among {list(values)}")
    ref_means = {ds: mean_and_std(_floats(v))[0] for ds, v in values[reference].items()}
    out: dict[str, dict[str, dict]] = {}
    for model, per_ds in values.items():
        out[model] = {}
        for ds, seq in per_ds.items():
            if ds not in ref_means:
                raise ValueError(f"{ds}: model {model!r} has values but the reference {reference!r} has none")
            floats = _floats(seq)
            mean, std = mean_and_std(floats)
            out[model][ds] = dict(zip(keys, (floats, mean, std, _pct(mean, ref_means[ds]))))
    return out


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1; 0.0 for one value): every mean (std) of the summary and report."""
    if len(values) == 0:
        raise ValueError("no values to summarize")
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def _pct(mean: float, reference_mean: float) -> float | None:
    """100 * (mean / reference - 1); None when the reference mean is 0 (undefined)."""
    return None if reference_mean == 0 else 100.0 * (mean / reference_mean - 1.0)


def _paired_p(x: list[float], y: list[float]) -> float:
    """Two-sided p of ttest_rel; nan when undefined (one seed, or all differences zero)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(ttest_rel(x, y).pvalue)


def _floats(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values]


def _datasets(table: Mapping[str, Mapping[str, object]]) -> list[str]:
    """Datasets in first-seen order across models."""
    return list(dict.fromkeys(ds for per_ds in table.values() for ds in per_ds))
