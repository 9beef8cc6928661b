"""Step 2: choose the pruned model (H1, H2, H3 and RANKING_MODELS, Algorithms 3, 5, 6 and 7).

Searches never touch a model: they send batches of (pruned heads, dataset) requests to an
`Evaluate` callable and decide from the mean F1 it returns. H1 sends every candidate in one
batch; H2/H3 advance all datasets in lockstep (one request per dataset per step), so an
executor can run a batch in parallel.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.stats import rankdata

from .errors import HeadpruneError

Head = tuple[int, int]
Evaluate = Callable[[list[tuple[frozenset[Head], str]]], list[float]]
KeepRule = Callable[[str, float, float], bool]

PAPER_GRID = "(paper: every k)"


def rank_models(scores: Mapping[str, Mapping[str, float]], n_pruned: Mapping[str, int]) -> list[dict]:
    """RANKING_MODELS (Algorithm 5): rank models per dataset (highest F1 = 1, ties averaged), sum the ranks.

    `scores[model][dataset]` is a mean F1; every model needs the same datasets. Rows come best
    first: lowest rank sum, then more heads pruned, then model name. Each row is
    {"model", "n_pruned", "rank_sum", "ranks": {ds: r}, "scores": {ds: f1}}.
    """
    models = list(scores)
    if not models:
        raise ValueError("rank_models needs at least one model")
    datasets = list(scores[models[0]])
    for model in models:
        if set(scores[model]) != set(datasets):
            raise ValueError(f"model {model!r} is scored on {sorted(scores[model])}, expected {sorted(datasets)}")
        if model not in n_pruned:
            raise ValueError(f"n_pruned has no entry for model {model!r}")
    ranks: dict[str, dict[str, float]] = {model: {} for model in models}
    for ds in datasets:
        column = np.array([scores[model][ds] for model in models], dtype=float)
        if not np.all(np.isfinite(column)):
            raise ValueError(f"non-finite score on dataset {ds!r}: {column.tolist()}")
        for model, rank in zip(models, rankdata(-column)):
            ranks[model][ds] = float(rank)
    rows = [
        {
            "model": model,
            "n_pruned": int(n_pruned[model]),
            "rank_sum": float(sum(ranks[model].values())),
            "ranks": ranks[model],
            "scores": {ds: float(scores[model][ds]) for ds in datasets},
        }
        for model in models
    ]
    return sorted(rows, key=lambda row: (row["rank_sum"], -row["n_pruned"], row["model"]))


def k_values_from(n_heads: int, k_step: int | None = None, k_values: Sequence[int] | None = None) -> list[int]:
    """The H1 grid: every k in [0, n_heads) (paper), every `k_step`-th k from 0, or an explicit list."""
    if k_step is not None and k_values is not None:
        raise HeadpruneError("give either k_step or k_values for H1, not both")
    if k_values is not None:
        return _validated_k_values(k_values, n_heads)
    if k_step is None:
        return list(range(n_heads))
    if isinstance(k_step, bool) or not isinstance(k_step, int) or k_step < 1:
        raise HeadpruneError(f"k_step must be a positive integer, got {k_step!r}")
    return list(range(0, n_heads, k_step))


def h1_search(
    order: Sequence[Head],
    datasets: Sequence[str],
    evaluate: Evaluate,
    k_values: Sequence[int] | None = None,
) -> dict:
    """H1 (Algorithm 3): score "the k least important heads pruned" for each k and dataset, then rank.

    `order` lists every head of the model, most important first. Returns the `h1.<order>`
    entry of summary.json: k_values, departure, scores {ds: {str(k): f1}}, ranking (rows of
    `rank_models` plus "k"), chosen_k and pruned_heads ([[layer, head], ...] of chosen_k).
    """
    order = _validated_order(order)
    datasets = _validated_datasets(datasets)
    n_heads = len(order)
    ks = list(range(n_heads)) if k_values is None else _validated_k_values(k_values, n_heads)
    candidates = {k: _least_important(order, k) for k in ks}
    requests = [(candidates[k], ds) for k in ks for ds in datasets]
    results = iter(_evaluate(evaluate, requests))
    by_model = {_k_name(k): {ds: next(results) for ds in datasets} for k in ks}
    ranking = rank_models(by_model, {_k_name(k): k for k in ks})
    for row in ranking:
        row["k"] = row["n_pruned"]
    chosen_k = ranking[0]["k"]
    return {
        "k_values": ks,
        "departure": _h1_departure(ks, n_heads),
        "scores": {ds: {str(k): by_model[_k_name(k)][ds] for k in ks} for ds in datasets},
        "ranking": ranking,
        "chosen_k": chosen_k,
        "pruned_heads": _as_pairs(candidates[chosen_k]),
    }


def h2_search(order: Sequence[Head], datasets: Sequence[str], evaluate: Evaluate, group_size: int = 1) -> dict:
    """H2 (Algorithm 6): per dataset keep a head when the score >= the best score so far (starting at 0).

    `group_size` > 1 tries that many heads per step (a speed option; the paper uses 1).
    Returns the `h2.<order>` entry of summary.json (see `_greedy_search`).
    """
    order, datasets = _validated_greedy_args(order, datasets, group_size)

    def keep(ds: str, score: float, best_so_far: float) -> bool:
        return score >= best_so_far

    return _greedy_search(order, datasets, evaluate, keep, group_size, "H2", complete=None)


def h3_search(order: Sequence[Head], datasets: Sequence[str], evaluate: Evaluate, group_size: int = 1) -> dict:
    """H3 (Algorithm 7): per dataset keep a head when the score >= the complete model's score there.

    The complete model's score is requested once per dataset (empty pruned set). Returns the
    `h3.<order>` entry of summary.json plus "complete" {ds: f1} (see `_greedy_search`).
    """
    order, datasets = _validated_greedy_args(order, datasets, group_size)
    complete = dict(zip(datasets, _evaluate(evaluate, [(frozenset(), ds) for ds in datasets])))

    def keep(ds: str, score: float, _: float) -> bool:
        return score >= complete[ds]

    return _greedy_search(order, datasets, evaluate, keep, group_size, "H3", complete=complete)


def _greedy_search(
    order: list[Head],
    datasets: list[str],
    evaluate: Evaluate,
    keep: KeepRule,
    group_size: int,
    strategy: str,
    complete: dict[str, float] | None,
) -> dict:
    """Greedy walk per dataset, then the datasets x datasets cross-scoring and RANKING_MODELS.

    Returns {"per_dataset": {ds: {"pruned_heads", "n_pruned", "score"}}, "cross": {source:
    {ds: f1}}, "ranking": rows named by source dataset, "chosen", "pruned_heads",
    "group_size", "departure"} (+ "complete" for H3). "score" is the F1 of the kept model on
    its own dataset as seen during the walk (H2: the best; H3: the last kept step, or the
    complete model's score when no head was kept; None if nothing was ever scored).
    """
    pruned, walk_scores = _greedy_walk(order, datasets, evaluate, keep, group_size)
    if complete is not None:
        walk_scores = {ds: walk_scores.get(ds, complete[ds]) for ds in datasets}
    cross = _cross_scores(pruned, datasets, evaluate)
    ranking = rank_models(cross, {ds: len(pruned[ds]) for ds in datasets})
    chosen = ranking[0]["model"]
    result = {
        "per_dataset": {
            ds: {
                "pruned_heads": _as_pairs(pruned[ds]),
                "n_pruned": len(pruned[ds]),
                "score": walk_scores.get(ds),
            }
            for ds in datasets
        },
        "cross": cross,
        "ranking": ranking,
        "chosen": chosen,
        "pruned_heads": _as_pairs(pruned[chosen]),
        "group_size": group_size,
        "departure": None
        if group_size == 1
        else f"{strategy} tried heads in groups of {group_size} (paper: one head at a time)",
    }
    if complete is not None:
        result["complete"] = dict(complete)
    return result


def _greedy_walk(
    order: list[Head], datasets: list[str], evaluate: Evaluate, keep: KeepRule, group_size: int
) -> tuple[dict[str, frozenset[Head]], dict[str, float]]:
    """Walk `order` from its least important end, all datasets in lockstep; returns kept sets and scores.

    Each step sends one request per dataset whose candidate would not prune every head. The
    keep rule sees the score of the last kept step (0.0 before any), which for H2 is the best so far.
    """
    all_heads = frozenset(order)
    least_first = order[::-1]
    steps = [frozenset(least_first[i : i + group_size]) for i in range(0, len(least_first), group_size)]
    pruned: dict[str, frozenset[Head]] = dict.fromkeys(datasets, frozenset())
    kept_scores: dict[str, float] = {}
    for step in steps:
        trial = {ds: pruned[ds] | step for ds in datasets if pruned[ds] | step != all_heads}
        if not trial:
            continue
        walking = list(trial)
        for ds, score in zip(walking, _evaluate(evaluate, [(trial[ds], ds) for ds in walking])):
            if keep(ds, score, kept_scores.get(ds, 0.0)):
                pruned[ds] = trial[ds]
                kept_scores[ds] = score
    return pruned, kept_scores


def _cross_scores(
    pruned: Mapping[str, frozenset[Head]], datasets: list[str], evaluate: Evaluate
) -> dict[str, dict[str, float]]:
    """Score each dataset's model on every dataset in one batch; identical requests are sent once."""
    requests = [(pruned[source], ds) for source in datasets for ds in datasets]
    unique = list(dict.fromkeys(requests))
    score_of = dict(zip(unique, _evaluate(evaluate, unique)))
    return {source: {ds: score_of[(pruned[source], ds)] for ds in datasets} for source in datasets}


def run_searches(searches: Mapping[str, Callable[[Evaluate], dict]], evaluate: Evaluate) -> dict[str, dict]:
    """Run several searches at once, merging their requests into one `evaluate` call per round.

    Each search (a callable taking an `Evaluate`, e.g. `lambda ev: h2_search(order, ds, ev)`) runs in
    its own thread; its evaluate calls wait until every unfinished search waits too, then the
    calling thread evaluates all their requests together (searches in the order given) and hands
    each search its part. An executor so sees every order's and strategy's candidates at once:
    far larger batches (a GPU fills; a cluster has work for every worker) and the same results as
    running the searches one after the other, since every score is keyed by what it is. An error
    in one search or in `evaluate` stops them all and is raised here."""
    names = list(searches)
    cond = threading.Condition()
    waiting: dict[str, list] = {}
    answers: dict[str, list[float]] = {}
    results: dict[str, dict] = {}
    errors: list[BaseException] = []
    running = set(names)

    class Abort(Exception):
        pass

    def client(name: str) -> Evaluate:
        def ask(requests):
            with cond:
                if errors:
                    raise Abort
                waiting[name] = list(requests)
                cond.notify_all()
                while name not in answers and not errors:
                    cond.wait()
                if name not in answers:
                    raise Abort
                return answers.pop(name)
        return ask

    def work(name: str) -> None:
        try:
            results[name] = searches[name](client(name))
        except Abort:
            pass
        except BaseException as err:  # noqa: BLE001 - handed to the calling thread
            with cond:
                errors.append(err)
        finally:
            with cond:
                running.discard(name)
                cond.notify_all()

    threads = [threading.Thread(target=work, args=(n,), daemon=True, name=f"headprune-search-{n}") for n in names]
    for thread in threads:
        thread.start()
    try:
        while True:
            with cond:
                while running and not errors and set(waiting) != running:
                    cond.wait()
                if errors or not running:
                    break
                batch = [(n, waiting.pop(n)) for n in names if n in waiting]
            merged = [request for _, requests in batch for request in requests]
            scores = list(evaluate(merged)) if merged else []
            with cond:
                at = 0
                for n, requests in batch:
                    answers[n] = scores[at: at + len(requests)]
                    at += len(requests)
                cond.notify_all()
    except BaseException as err:
        with cond:
            errors.append(err)
            cond.notify_all()
        raise
    finally:
        for thread in threads:
            thread.join(timeout=5)
    if errors:
        raise errors[0]
    return {n: results[n] for n in names}


def _evaluate(evaluate: Evaluate, requests: list[tuple[frozenset[Head], str]]) -> list[float]:
    """Call the evaluator and check it answered one finite float per request."""
    results = [float(score) for score in evaluate(requests)]
    if len(results) != len(requests):
        raise ValueError(f"evaluator returned {len(results)} scores for {len(requests)} requests")
    bad = [req for req, score in zip(requests, results) if not math.isfinite(score)]
    if bad:
        raise ValueError(f"evaluator returned a non-finite score for {len(bad)} request(s), e.g. {bad[0]}")
    return results


def _least_important(order: Sequence[Head], k: int) -> frozenset[Head]:
    """The last k heads of a most-important-first order."""
    return frozenset(order[len(order) - k :]) if k else frozenset()


def _k_name(k: int) -> str:
    return f"k={k}"


def _as_pairs(heads: frozenset[Head]) -> list[list[int]]:
    return [[layer, head] for layer, head in sorted(heads)]


def _h1_departure(ks: list[int], n_heads: int) -> str | None:
    """None for the paper's grid (every k), else a one-line description of the subset."""
    if ks == list(range(n_heads)):
        return None
    if len(ks) > 1 and ks[0] == 0:
        step = ks[1]
        if ks == list(range(0, n_heads, step)):
            return f"H1 evaluated k in steps of {step} {PAPER_GRID}"
    return f"H1 evaluated {len(ks)} of {n_heads} values of k: {ks} {PAPER_GRID}"


def _validated_k_values(k_values: Sequence[int], n_heads: int) -> list[int]:
    ks = list(k_values)
    if not ks:
        raise HeadpruneError("k_values is empty: give at least one k in [0, n_heads)")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < n_heads:
            raise HeadpruneError(f"k_values must be integers with 0 <= k < {n_heads} (never every head), got {k!r}")
    return sorted({int(k) for k in ks})


def _validated_order(order: Sequence[Head]) -> list[Head]:
    heads = [(int(layer), int(head)) for layer, head in order]
    if not heads:
        raise HeadpruneError("the importance order is empty")
    if len(set(heads)) != len(heads):
        raise HeadpruneError("the importance order lists a head more than once")
    return heads


def _validated_greedy_args(
    order: Sequence[Head], datasets: Sequence[str], group_size: int
) -> tuple[list[Head], list[str]]:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise HeadpruneError(f"group_size must be a positive integer, got {group_size!r}")
    return _validated_order(order), _validated_datasets(datasets)


def _validated_datasets(datasets: Sequence[str]) -> list[str]:
    names = list(datasets)
    if not names:
        raise HeadpruneError("Step 2 needs at least one dataset")
    if len(set(names)) != len(names):
        raise HeadpruneError(f"a dataset is listed more than once: {names}")
    return names
