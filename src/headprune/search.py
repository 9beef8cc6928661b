"""Step 2: choose the pruned model (H1, H2, H3 and RANKING_MODELS, Algorithms 3, 5, 6 and 7).

Searches never touch a model. Each is an ask/tell strategy (as an Optuna study is: the strategy
decides, the caller owns the loop): `ask()` returns the requests of its next round,
`Request(pruned, dataset)`, and `tell(scores)` hands it their mean F1, same order; `done` says
when it has nothing more to ask and `result()` is its summary.json entry (a JSON object, which a
racing scheduler extends; `summary.H1Result`/`GreedyResult` read it). `run_strategies` drives
many strategies without threads: each round it asks every unfinished one and answers all their
requests with ONE `Evaluate` call (strategies in the order given), so an executor sees every
order's and strategy's candidates together (a GPU fills, a cluster has work for every worker),
and each strategy gets what it would get alone, since a score depends only on its request.
Rounds: H1 asks every candidate at once; H3 first asks the complete model on every dataset;
H2/H3 then ask one step of every dataset's walk per round (lockstep), then the cross-scoring
batch (identical requests once). `h1_search`, `h2_search` and `h3_search` run one strategy and
return its typed result (`H1Result`, `GreedyResult`).

Racing (`racing.Race`) is a scheduler, not part of a strategy (Ray Tune's split of searcher and
scheduler): it wraps a strategy, answers each of its rounds over several rounds of its own (one
seed block at a time) and tells the strategy one score per request, so the strategy never knows.
What it needs to know of a round, a strategy declares (`Strategy.round()`, a `Round`): "compare"
(H1's round, the cross-scoring round: the requests sharing `pruned` are one candidate, the datasets
its instances), "walk" (each request's score is compared with what `Round.versus` names: the
last kept step, the complete model, or the constant 0), "baseline" (H3's complete model).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Hashable, Mapping, Sequence
from typing import NamedTuple, Protocol, TypeVar

import numpy as np
from scipy.stats import rankdata

from .errors import HeadpruneError
from .heads import Head, HeadSet
from .summary import GreedyResult, H1Result


class Request(NamedTuple):
    """One evaluation a strategy asks for: `pruned` heads removed, scored on `dataset`.

    A plain `(pruned, dataset)` tuple to an evaluator; `pruned` also names the candidate."""

    pruned: frozenset[Head]
    dataset: str


class Round(NamedTuple):
    """A round's requests and what racing needs to know of them (`kind`):

    - "compare": candidates (the requests sharing `pruned`, one per dataset) are ranked against
      each other (H1's round; the cross-scoring round);
    - "walk": each request is kept or not by comparing its score with `versus[i]`'s (a request told
      earlier in this search), or, where `versus[i]` is None, with the constant 0 ("score >= ..."
      always: H2 before anything is kept);
    - "baseline": scores other rounds are compared with (H3's complete model).

    `decisions` (a walk): the most keep/reject decisions the whole walk makes, every step on every
    dataset; a race whose confidence is the walk's divides its significance level by it.
    """

    kind: str
    requests: list[Request]
    versus: list[Request | None] | None = None
    decisions: int | None = None


Evaluate = Callable[[list[Request]], Sequence[float]]
KeepRule = Callable[[str, float, float], bool]
VersusRule = Callable[[str, "frozenset[Head] | None"], "Request | None"]
Rounds = Generator[Round, list[float], dict]
K = TypeVar("K", bound=Hashable)

PAPER_GRID = "(paper: every k)"


class Strategy(Protocol):
    """What `run_strategies` (and a future racing scheduler) needs of a search."""

    @property
    def done(self) -> bool:
        """True once the search has asked everything; `result()` is then ready."""
        ...

    def ask(self) -> list[Request]:
        """The requests of the next round (the same ones until told); [] when done."""
        ...

    def tell(self, scores: Sequence[float]) -> None:
        """The mean F1 of each request of the last `ask()`, same order."""
        ...

    def round(self) -> Round | None:
        """The round `ask()` returns, with its kind (what a racing scheduler needs); None when done."""
        ...

    def result(self) -> dict:
        """The search's summary.json entry."""
        ...


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


class _RoundStrategy:
    """The ask/tell bookkeeping shared by H1, H2 and H3.

    A subclass writes its algorithm as the generator `_play` (`scores = yield requests`, then
    `return result`), so the method reads as one piece while the caller owns the loop."""

    def _start(self) -> None:
        self._rounds = self._play()
        self._round: Round | None = None
        self._result: dict | None = None
        self.asked: set[Request] = set()  # every distinct request of every round so far
        self._advance(None)

    def _play(self) -> Rounds:
        raise NotImplementedError

    def _advance(self, scores: list[float] | None) -> None:
        try:
            asked = self._rounds.send(scores)
            while not asked.requests:  # a round with nothing to ask is no round
                asked = self._rounds.send([])
        except StopIteration as stop:
            self._round, self._result = None, stop.value
        else:
            self._round = asked
            self.asked.update(asked.requests)

    @property
    def done(self) -> bool:
        return self._result is not None

    def ask(self) -> list[Request]:
        return list(self._round.requests) if self._round is not None else []

    def round(self) -> Round | None:
        return self._round

    def tell(self, scores: Sequence[float]) -> None:
        name = type(self).__name__
        if self.done:
            raise RuntimeError(f"{name} is done: it has asked for nothing")
        asked = self.ask()
        if len(scores) != len(asked):
            raise ValueError(f"{name} was told {len(scores)} scores for {len(asked)} requests")
        self._advance([float(score) for score in scores])

    def result(self) -> dict:
        if self._result is None:
            raise RuntimeError(f"{type(self).__name__} is not done: ask() still has requests")
        return self._result


class H1Strategy(_RoundStrategy):
    """H1 (Algorithm 3): score "the k least important heads pruned" for each k and dataset, then rank.

    `order` lists every head of the model, most important first. One round: every (k, dataset).
    The result is the `h1.<order>` entry of summary.json: k_values, departure, scores
    {ds: {str(k): f1}}, ranking (rows of `rank_models` plus "k"), chosen_k and pruned_heads
    ([[layer, head], ...] of chosen_k).
    """

    def __init__(self, order: Sequence[Head], datasets: Sequence[str], k_values: Sequence[int] | None = None) -> None:
        self.order = _validated_order(order)
        self.datasets = _validated_datasets(datasets)
        n_heads = len(self.order)
        self.k_values = list(range(n_heads)) if k_values is None else _validated_k_values(k_values, n_heads)
        self._start()

    def _play(self) -> Rounds:
        order, datasets, ks = self.order, self.datasets, self.k_values
        n_heads = len(order)
        candidates = {k: _least_important(order, k) for k in ks}
        results = iter((yield Round("compare", [Request(candidates[k], ds) for k in ks for ds in datasets])))
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
            "pruned_heads": candidates[chosen_k].pairs(),
        }


class _GreedyStrategy(_RoundStrategy):
    """H2/H3's common part: the lockstep greedy walk per dataset, then cross-scoring and RANKING_MODELS."""

    name = ""

    def __init__(self, order: Sequence[Head], datasets: Sequence[str], group_size: int = 1) -> None:
        self.order, self.datasets = _validated_greedy_args(order, datasets, group_size)
        self.group_size = group_size
        self._start()

    def _greedy(self, keep: KeepRule, versus: VersusRule, complete: dict[str, float] | None) -> Rounds:
        """The walk, then the datasets x datasets cross-scoring and RANKING_MODELS.

        Returns {"per_dataset": {ds: {"pruned_heads", "n_pruned", "score"}}, "cross": {source:
        {ds: f1}}, "ranking": rows named by source dataset, "chosen", "pruned_heads",
        "group_size", "departure"} (+ "complete" for H3). "score" is the F1 of the kept model on
        its own dataset as seen during the walk (H2: the best; H3: the last kept step, or the
        complete model's score when no head was kept; None if nothing was ever scored).
        """
        datasets, group_size = self.datasets, self.group_size
        pruned, walk_scores = yield from _greedy_walk(self.order, datasets, keep, versus, group_size)
        if complete is not None:
            walk_scores = {ds: walk_scores.get(ds, complete[ds]) for ds in datasets}
        cross = yield from _cross_scores(pruned, datasets)
        ranking = rank_models(cross, {ds: len(pruned[ds]) for ds in datasets})
        chosen = ranking[0]["model"]
        result = {
            "per_dataset": {
                ds: {
                    "pruned_heads": HeadSet(pruned[ds]).pairs(),
                    "n_pruned": len(pruned[ds]),
                    "score": walk_scores.get(ds),
                }
                for ds in datasets
            },
            "cross": cross,
            "ranking": ranking,
            "chosen": chosen,
            "pruned_heads": HeadSet(pruned[chosen]).pairs(),
            "group_size": group_size,
            "departure": None
            if group_size == 1
            else f"{self.name} tried heads in groups of {group_size} (paper: one head at a time)",
        }
        if complete is not None:
            result["complete"] = dict(complete)
        return result


class H2Strategy(_GreedyStrategy):
    """H2 (Algorithm 6): per dataset keep a head when the score >= the best score so far (starting at 0).

    `group_size` > 1 tries that many heads per step (a speed option; the paper uses 1). The
    result is the `h2.<order>` entry of summary.json (see `_GreedyStrategy._greedy`).
    """

    name = "H2"

    def _play(self) -> Rounds:
        def keep(ds: str, score: float, best_so_far: float) -> bool:
            return score >= best_so_far

        def versus(ds: str, kept: frozenset[Head] | None) -> Request | None:
            return None if kept is None else Request(kept, ds)  # the best so far is the last kept step

        return (yield from self._greedy(keep, versus, complete=None))


class H3Strategy(_GreedyStrategy):
    """H3 (Algorithm 7): per dataset keep a head when the score >= the complete model's score there.

    Its first round asks the complete model's score once per dataset (empty pruned set). The
    result is the `h3.<order>` entry of summary.json plus "complete" {ds: f1}.
    """

    name = "H3"

    def _play(self) -> Rounds:
        scores = yield Round("baseline", [Request(frozenset(), ds) for ds in self.datasets])
        complete = dict(zip(self.datasets, scores))

        def keep(ds: str, score: float, _: float) -> bool:
            return score >= complete[ds]

        def versus(ds: str, _: frozenset[Head] | None) -> Request:
            return Request(frozenset(), ds)

        return (yield from self._greedy(keep, versus, complete=complete))


def run_strategies(strategies: Mapping[K, Strategy], evaluate: Evaluate) -> dict[K, dict]:
    """Drive several searches at once: one `evaluate` call per round holds every unfinished one's requests.

    Each round asks every strategy that is not done, concatenates their requests (strategies in
    the order given), evaluates them together, and tells each its part. An executor so sees the
    largest batch the method allows, and each result is the one the strategy gives alone. An
    error in a strategy or in `evaluate` propagates at once. Returns {name: result()}, same order.
    """
    while True:
        batch = [(name, strategy.ask()) for name, strategy in strategies.items() if not strategy.done]
        batch = [(name, requests) for name, requests in batch if requests]
        if not batch:
            return {name: strategy.result() for name, strategy in strategies.items()}
        scores = _evaluate(evaluate, [request for _, requests in batch for request in requests])
        at = 0
        for name, requests in batch:
            strategies[name].tell(scores[at : at + len(requests)])
            at += len(requests)


def h1_search(
    order: Sequence[Head],
    datasets: Sequence[str],
    evaluate: Evaluate,
    k_values: Sequence[int] | None = None,
) -> H1Result:
    """H1 (Algorithm 3) in one call: `H1Strategy` driven with `evaluate`, its result typed."""
    return H1Result.from_json(_run_one(H1Strategy(order, datasets, k_values=k_values), evaluate), key="h1")


def h2_search(order: Sequence[Head], datasets: Sequence[str], evaluate: Evaluate, group_size: int = 1) -> GreedyResult:
    """H2 (Algorithm 6) in one call: `H2Strategy` driven with `evaluate`, its result typed."""
    return GreedyResult.from_json(_run_one(H2Strategy(order, datasets, group_size=group_size), evaluate), key="h2")


def h3_search(order: Sequence[Head], datasets: Sequence[str], evaluate: Evaluate, group_size: int = 1) -> GreedyResult:
    """H3 (Algorithm 7) in one call: `H3Strategy` driven with `evaluate`, its result typed."""
    return GreedyResult.from_json(_run_one(H3Strategy(order, datasets, group_size=group_size), evaluate), key="h3")


def _run_one(strategy: Strategy, evaluate: Evaluate) -> dict:
    return run_strategies({"search": strategy}, evaluate)["search"]


def _greedy_walk(
    order: list[Head], datasets: list[str], keep: KeepRule, versus: VersusRule, group_size: int
) -> Generator[Round, list[float], tuple[dict[str, frozenset[Head]], dict[str, float]]]:
    """Walk `order` from its least important end, all datasets in lockstep; returns kept sets and scores.

    Each step asks one request per dataset whose candidate would not prune every head. The
    keep rule sees the score of the last kept step (0.0 before any), which for H2 is the best so far;
    `versus(ds, last kept set or None)` names the request that score belongs to (the round's `versus`).
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
        scores = yield Round("walk", [Request(trial[ds], ds) for ds in walking],
                             [versus(ds, pruned[ds] if ds in kept_scores else None) for ds in walking],
                             decisions=len(steps) * len(datasets))
        for ds, score in zip(walking, scores):
            if keep(ds, score, kept_scores.get(ds, 0.0)):
                pruned[ds] = trial[ds]
                kept_scores[ds] = score
    return pruned, kept_scores


def _cross_scores(
    pruned: Mapping[str, frozenset[Head]], datasets: list[str]
) -> Generator[Round, list[float], dict[str, dict[str, float]]]:
    """Score each dataset's model on every dataset in one round; identical requests are asked once."""
    unique = list(dict.fromkeys(Request(pruned[source], ds) for source in datasets for ds in datasets))
    score_of = dict(zip(unique, (yield Round("compare", unique))))
    return {source: {ds: score_of[Request(pruned[source], ds)] for ds in datasets} for source in datasets}


def _evaluate(evaluate: Callable[[list], Sequence[float]], requests: list) -> list[float]:
    """Call the evaluator and check it answered one finite float per request."""
    results = [float(score) for score in evaluate(requests)]
    if len(results) != len(requests):
        raise ValueError(f"evaluator returned {len(results)} scores for {len(requests)} requests")
    bad = [req for req, score in zip(requests, results) if not math.isfinite(score)]
    if bad:
        raise ValueError(f"evaluator returned a non-finite score for {len(bad)} request(s), e.g. {tuple(bad[0])}")
    return results


def _least_important(order: Sequence[Head], k: int) -> HeadSet:
    """The last k heads of a most-important-first order."""
    return HeadSet(order[len(order) - k :] if k else ())


def _k_name(k: int) -> str:
    return f"k={k}"


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
