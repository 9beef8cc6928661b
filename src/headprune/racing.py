"""Racing over seeds (F-Race, Birattari et al. 2002; irace, López-Ibáñez et al. 2016): a scheduler
that wraps a Step 2 strategy and spends seeds only where a decision is still open.

A `Race` is itself an ask/tell strategy whose requests are single seeds, `SeedRequest(pruned,
dataset, seed)`, answered with that seed's F1 (`Scorer.evaluate_seeds`); `search.run_strategies`
drives races as it drives strategies, so one round of every race is one executor batch (the
in-process loop, Ray, or a pack of the batched engine). The wrapped strategy is told one score
per request, as without racing, and never knows. Per round kind (`search.Round`):

- "compare" (H1's round, H2/H3's cross-scoring): the race proper. Every candidate (the requests
  sharing a pruned set; the datasets are its instances) gets the same seeds in the same order, one
  seed block at a time: a block is one seed on every dataset for every candidate still racing.
  From block `first_test` on, the blocks so far, one row per (dataset, seed), are tested: with
  three or more candidates the Friedman test (`scipy.stats.friedmanchisquare`, candidates ranked
  within each row, as the paper ranks models within each dataset) and, when it rejects, Conover's
  post-hoc test for Friedman rankings (`scikit_posthocs.posthoc_conover_friedman`, unadjusted, as
  irace compares each candidate with the best); with two, the paired Wilcoxon signed-rank test
  (`scipy.stats.wilcoxon`, as F-Race does). A candidate significantly worse than the best (the
  highest rank sum) at `confidence` is dropped. The survivors get every seed (once one is left, it
  alone is scored on the rest). Each request is then told a mean on the survivors' scale: a
  survivor its mean over every seed; a dropped candidate its mean over the seeds it had plus the
  survivors' mean offset on that dataset between every seed and those seeds (at the fidelity it was
  dropped at: a screened-out candidate's low-fidelity mean is moved onto the full fidelity the
  same way), a control-variate estimate of its full-seed mean. Seeds fix the splits, so a seed
  moves every candidate's F1 on a dataset alike, by up to points; a raw partial mean would carry
  the first seeds' luck into the ranking, and the choice would change when one (dataset, seed)
  block is shifted, which the full-seed rule ignores. With the offset, every told score moves by
  the same amount under such a shift, so the race's choice is invariant to it as the paper's rule
  is (ranking on the seeds every candidate shares instead would decide the survivors' order on the
  first seeds only). So the paper's rule (Algorithm 5: per-dataset means, ranks, lowest rank sum)
  still ranks every candidate (a Borda count needs every candidate), but only a survivor can be
  chosen: if the rank sum puts a dropped candidate first, the best-ranked survivor is chosen
  instead (`result()`, "racing.chosen_instead").
- "walk" (H2/H3's greedy steps): each accept/reject decision ("score >= the best so far", ">=
  the complete model's") is a paired sequential test over seeds: after `first_test` seeds, and
  after each further one, the step's per-seed F1 is compared with its reference's on the same
  seeds (`walk_decision`, by `walk_test`): "t-test", a paired t-test (`scipy.stats.ttest_rel`),
  decided once p < 1 - confidence; "predictive", the predictive probability that the seeds still
  to come flip the full-seed rule's decision (stochastic curtailment, with the seed noise pooled
  over the walk's decided steps on the same dataset), decided once it is below 1 - confidence;
  "predictive-walk", the same below (1 - confidence) / the walk's decisions (`Round.decisions`,
  Bonferroni); "skeptical" and "skeptical-walk" (the default), the same two with the flip
  probability computed as if the step's true difference were zero and from the step's own seeds
  only, which makes the promise hold by construction: an early decision goes against the
  full-seed rule with probability below the level it was taken at, for independent normal seed
  noise (`walk_decision`), so "skeptical-walk" keeps the full-seed walk's whole path with the
  configured confidence.
  Decided, the decision is the sign of the mean difference so far; else the next seed is added,
  and with every seed used the paper's rule decides (mean difference >= 0). The reference's seeds
  are evaluated as the test needs them.
  The strategy is told the reference's told score plus the mean paired difference (a
  control-variate estimate of the step's mean), so its own rule reaches the same decision; these
  estimates chain along an H2 walk (the reference is the last kept step, itself told an estimate),
  so in `result()` each kept model's walk score is replaced by its mean over the seeds the race
  scored it with. A step compared with the constant 0 (H2 before anything is kept) is always kept;
  it gets `first_test` seeds.
- "baseline" (H3's complete model): every seed (its score is every later step's reference).

Screening (`screen="no-adjust"`, `[step2] racing_screen`): a compared round with three candidates
or more is first raced at the low fidelity, the score without the adjusting step (`scoring.epochs =
0`: prune, features, SVM; about a fifth of the cost), and only its survivors race at the full
fidelity: successive halving across fidelities (Jamieson & Talwalkar 2016; Li et al. 2018,
Hyperband), each stage an F-Race. `by_fidelity` routes the low requests (`SeedRequest.low`) to
their own evaluator.

`result()` is the wrapped strategy's result plus `evaluations` (distinct seed evaluations this race
asked for), `grid_evaluations` (what the full protocol would have asked on the same path: every
distinct request of every round with every seed) and `racing` (settings, eliminations with the seeds they
had and the p-value, the walk's decisions)."""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass
from typing import ClassVar, NamedTuple

import numpy as np

from .constraints import Constraint, Interval, Options, check
from .errors import HeadpruneError
from .frace import worse_than_best
from .heads import Head, HeadSet
from .search import Request, Round, Strategy
from .walk import SeedNoise, walk_decision

DEFAULT_CONFIDENCE = 0.95
DEFAULT_FIRST_TEST = 3
# How a walk's step is decided before every seed is in (`walk_decision`): "t-test", the paired t-test
# of the step against its reference; "predictive", the probability that the remaining seeds flip the
# paper's full-seed rule, with the seed noise pooled over the walk's steps on the same dataset, at the
# confidence per step; "predictive-walk", the same with the confidence the whole walk's (Bonferroni
# over its decisions, `Round.decisions`); "skeptical" and "skeptical-walk", the flip probability as if
# the step's true difference were zero, from the step's own seeds: the one whose promise (every step as
# the full-seed rule decides it, so the same path) holds by construction, not only as far as a model does.
WALK_TESTS = ("t-test", "predictive", "predictive-walk", "skeptical", "skeptical-walk")
DEFAULT_WALK_TEST = "skeptical-walk"
WALK_TEST_WORDS = {  # for the departures line and the report
    "t-test": "a paired sequential t-test against the step's reference",
    "predictive": "the predictive probability that the remaining seeds flip the full-seed rule's decision "
                  "(seed noise pooled per dataset), per step",
    "predictive-walk": "the predictive probability that the remaining seeds flip the full-seed rule's decision "
                       "(seed noise pooled per dataset), Bonferroni over the walk's decisions so that the "
                       "confidence is the whole walk's",
    "skeptical": "the probability that the remaining seeds flip the full-seed rule's decision were the step's "
                 "true difference zero (conditional power under no difference, the step's own seeds), per step",
    "skeptical-walk": "the probability that the remaining seeds flip the full-seed rule's decision were the step's "
                      "true difference zero (conditional power under no difference, the step's own seeds), "
                      "Bonferroni over the walk's decisions so that the confidence is the whole walk's",
}


class SeedRequest(NamedTuple):
    """One seed of one request: `pruned` heads removed, scored on `dataset` with `seed`; `low`: at
    the low fidelity a screened race uses (`by_fidelity` routes it)."""

    pruned: frozenset[Head]
    dataset: str
    seed: int
    low: bool = False


SCREENS = ("no-adjust",)  # low fidelities a race can screen with: scoring.epochs = 0


def by_fidelity(full: Callable[[list], Sequence[float]], low: Callable[[list], Sequence[float]] | None
                ) -> Callable[[list[SeedRequest]], list[float]]:
    """One evaluator for a screened race's batches: `(pruned, dataset, seed)` triples to `full`, or
    to `low` for the requests marked `low` (both called once per batch, order kept)."""

    def evaluate(requests: list[SeedRequest]) -> list[float]:
        out: list[float] = [0.0] * len(requests)
        for flag, evaluator in ((False, full), (True, low)):
            where = [i for i, r in enumerate(requests) if bool(r[3] if len(r) > 3 else False) == flag]
            if not where:
                continue
            if evaluator is None:
                raise HeadpruneError("a low-fidelity request reached an evaluator without a low fidelity")
            for i, value in zip(where, evaluator([tuple(requests[i][:3]) for i in where])):
                out[i] = float(value)
        return out

    return evaluate


@dataclass(frozen=True)
class RacingSettings:
    """`confidence`: 1 - the significance level of every test; `first_test`: the seeds (blocks)
    before the first test; `walk_test`: how an H2/H3 step's decision is made clear (`WALK_TESTS`)."""

    confidence: float = DEFAULT_CONFIDENCE
    first_test: int = DEFAULT_FIRST_TEST
    walk_test: str = DEFAULT_WALK_TEST

    # Also the configuration's `[step2] racing_<name>` keys, and `replay --walk-test`'s check.
    constraints: ClassVar[dict[str, Constraint]] = {
        "confidence": Interval(float, 0, 1, closed="neither"),
        "first_test": Interval(int, 2, words="at least 2 seeds"),
        "walk_test": Options(WALK_TESTS, words=f"one of {', '.join(WALK_TESTS)}"),
    }

    def __post_init__(self) -> None:
        for key, constraint in self.constraints.items():
            check(f"racing {key.replace('_', ' ')}", getattr(self, key), constraint)

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence



Steps = Generator[list[SeedRequest], None, list[float]]


class Race:
    """`strategy` raced over `seeds` (in this order; see the module's docstring)."""

    def __init__(self, strategy: Strategy, seeds: Sequence[int], settings: RacingSettings = RacingSettings(),
                 screen: str | None = None):
        if screen is not None and screen not in SCREENS:
            raise HeadpruneError(f"unknown racing screen {screen!r} (known: {', '.join(SCREENS)})")
        self.screen = screen
        self.strategy = strategy
        self.seeds = [int(s) for s in seeds]
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise HeadpruneError(f"a race needs distinct seeds, got {list(seeds)}")
        self.settings = settings
        self._f1: dict[SeedRequest, float] = {}  # every seed score seen (what this race asked for)
        self._told: dict[Request, float] = {}  # what the strategy was told for each request
        self._grid: set[Request] = set()  # every distinct request of the strategy's rounds
        self._eliminations: list[dict] = []
        self._decisions: list[dict] = []
        self._noise = SeedNoise()  # the walk's decided steps' paired differences, per dataset
        self._rounds = 0
        self._steps: Steps | None = None
        self._asked: list[SeedRequest] = []
        self._compared: list[frozenset[Head]] = []  # the candidates of the last compared round
        self._next()

    # ------------------------------------------------------------------ ask/tell
    @property
    def done(self) -> bool:
        return self._steps is None

    def ask(self) -> list[SeedRequest]:
        return list(self._asked)

    def round(self) -> Round | None:
        return None  # a race's requests are seeds, not a strategy's round

    def tell(self, scores: Sequence[float]) -> None:
        if self.done:
            raise RuntimeError("the race is done: it has asked for nothing")
        if len(scores) != len(self._asked):
            raise ValueError(f"the race was told {len(scores)} scores for {len(self._asked)} requests")
        for request, score in zip(self._asked, scores):
            self._f1[request] = float(score)
        if not self._run_steps():
            self._next()

    def result(self) -> dict:
        if not self.done:
            raise RuntimeError("the race is not done: ask() still has requests")
        result = dict(self.strategy.result())
        dropped = {HeadSet(e["pruned_heads"]) for e in self._eliminations if "pruned_heads" in e}
        instead = _survivor_choice(result, dropped, self._compared)
        for ds, model in (result.get("per_dataset") or {}).items():
            # The walk was told estimates (see the module docstring); the summary gets each kept
            # model's mean over the seeds the race scored it with.
            pruned = HeadSet(model["pruned_heads"])
            scored = [self._f1[r] for r in (SeedRequest(pruned, ds, s) for s in self.seeds) if r in self._f1]
            if scored and model.get("score") is not None:
                model["score"] = float(np.mean(scored))
        result["evaluations"] = sum(1 for r in self._f1 if not r.low)
        result["grid_evaluations"] = len(self._grid) * len(self.seeds)
        if self.screen is not None:
            result["low_evaluations"] = sum(1 for r in self._f1 if r.low)
        result["racing"] = {
            **asdict(self.settings),
            **({"screen": self.screen} if self.screen is not None else {}),
            "seeds": self.seeds,
            "eliminations": self._eliminations,
            "decisions": self._decisions,
            "chosen_instead": instead,
        }
        return result

    # ------------------------------------------------------------------ rounds
    def _next(self) -> None:
        """Start the wrapped strategy's next round that needs seeds not yet seen (or finish)."""
        while not self.strategy.done:
            round_ = self.strategy.round()
            if round_ is None:
                raise HeadpruneError(f"{type(self.strategy).__name__} does not declare its rounds: it cannot be raced")
            self._rounds += 1
            self._grid.update(round_.requests)
            self._round, self._steps = round_, self._play(round_)
            if self._run_steps():
                return
        self._steps, self._asked = None, []

    def _run_steps(self) -> bool:
        """Run the round's steps until one needs seeds not yet seen (True); else tell the strategy
        the round's scores (False)."""
        assert self._steps is not None
        try:
            while True:
                missing = list(dict.fromkeys(r for r in next(self._steps) if r not in self._f1))
                if missing:
                    self._asked = missing
                    return True
        except StopIteration as stop:
            told = stop.value
        for request, score in zip(self._round.requests, told):
            self._told[request] = score
        self.strategy.tell(told)
        return False

    def _play(self, round_: Round) -> Steps:
        if round_.kind == "compare":
            return self._compare(round_.requests)
        if round_.kind == "walk":
            return self._walk(round_.requests, round_.versus or [None] * len(round_.requests), round_.decisions)
        if round_.kind == "baseline":
            return self._every_seed(round_.requests)
        raise HeadpruneError(f"unknown round kind {round_.kind!r}")

    def _mean(self, request: Request, seeds: Sequence[int], low: bool = False) -> float:
        return float(np.mean([self._f1[SeedRequest(request.pruned, request.dataset, s, low)] for s in seeds]))

    def _every_seed(self, requests: list[Request]) -> Steps:
        yield [SeedRequest(r.pruned, r.dataset, s) for r in requests for s in self.seeds]
        return [self._mean(r, self.seeds) for r in requests]

    def _compare(self, requests: list[Request]) -> Steps:
        """The race proper: seed blocks for the candidates still in it, tests from `first_test` on.
        Screened (three candidates or more): first the same race at the low fidelity, then one
        among its survivors at the full fidelity. Dropped candidates are told shift-adjusted
        means (`_adjusted`)."""
        candidates: dict[frozenset[Head], list[Request]] = {}
        for request in requests:
            candidates.setdefault(request.pruned, []).append(request)
        datasets = sorted(r.dataset for r in next(iter(candidates.values())))
        for mine in candidates.values():
            if sorted(r.dataset for r in mine) != datasets:
                raise HeadpruneError("a compared round must score every candidate on the same datasets")
        alive = list(candidates)
        self._compared = list(candidates)
        screened: dict[frozenset[Head], int] = {}
        if self.screen is not None and len(alive) >= 3:
            alive, screened = yield from self._race(alive, datasets, low=True)
            screened = {p: n for p, n in screened.items() if p not in alive}
        survivors, seeds_of = yield from self._race(alive, datasets, low=False)
        every = self.seeds[: seeds_of[survivors[0]]]
        told = []
        for r in requests:
            if r.pruned in screened:
                told.append(self._adjusted(r, survivors, every, self.seeds[: screened[r.pruned]], low=True))
            elif r.pruned in survivors:
                told.append(self._mean(r, every))
            else:
                told.append(self._adjusted(r, survivors, every, self.seeds[: seeds_of[r.pruned]], low=False))
        return told

    def _adjusted(self, request: Request, survivors: list[frozenset[Head]], every: Sequence[int],
                  had: Sequence[int], low: bool) -> float:
        """A dropped candidate's shift-adjusted mean: its mean over the seeds it had (at the fidelity
        it was dropped at) plus the survivors' mean offset on that dataset between their full-fidelity
        mean over `every` seed and their mean over the same seeds at the same fidelity. The survivors
        are scored on every seed and at the full fidelity, so this puts the dropped candidate on their
        scale: a control-variate estimate of its full-seed mean, as the walk's told scores are."""
        offset = np.mean([
            self._mean(Request(p, request.dataset), every) - self._mean(Request(p, request.dataset), had, low=low)
            for p in survivors
        ])
        return self._mean(request, had, low=low) + float(offset)

    def _race(self, alive: list[frozenset[Head]], datasets: list[str], low: bool
              ) -> Generator[list[SeedRequest], None, tuple[list[frozenset[Head]], dict[frozenset[Head], int]]]:
        """Seed blocks for `alive` (at the low fidelity if `low`), dropping the significantly worse
        from `first_test` on; returns the survivors and the seeds every candidate got."""
        alpha, first = self.settings.alpha, self.settings.first_test
        seeds_of: dict[frozenset[Head], int] = {}
        used = 0
        for block, seed in enumerate(self.seeds, start=1):
            yield [SeedRequest(p, ds, seed, low) for p in alive for ds in datasets]
            used = block
            if block < first or len(alive) < 2:
                continue
            seen = self.seeds[:block]
            table = np.array([[self._f1[SeedRequest(p, ds, s, low)] for p in alive] for ds in datasets for s in seen])
            for index, p_value, test in worse_than_best(table, alpha):
                pruned = alive[index]
                seeds_of[pruned] = block
                self._eliminations.append({
                    "round": self._rounds, "n_pruned": len(pruned), "pruned_heads": _pairs(pruned),
                    "after_seeds": block, "p_value": p_value, "test": test,
                    **({"fidelity": self.screen} if low else {}),
                })
            alive = [p for p in alive if p not in seeds_of]
        for pruned in alive:
            seeds_of[pruned] = used
        return alive, seeds_of

    def _walk(self, requests: list[Request], versus: list[Request | None], decisions: int | None) -> Steps:
        """Each step's paired sequential test against its reference, all steps of the round in lockstep."""
        n_seeds = len(self.seeds)
        n = min(self.settings.first_test, n_seeds)
        told: dict[int, float] = {}
        open_ = list(range(len(requests)))
        while open_:
            seeds = self.seeds[:n]
            need = []
            for i in open_:
                need += [SeedRequest(requests[i].pruned, requests[i].dataset, s) for s in seeds]
                if versus[i] is not None:
                    need += [SeedRequest(versus[i].pruned, versus[i].dataset, s) for s in seeds]
            yield need
            still = []
            for i in open_:
                request, reference = requests[i], versus[i]
                trial = np.array([self._f1[SeedRequest(request.pruned, request.dataset, s)] for s in seeds])
                base = None if reference is None else np.array(
                    [self._f1[SeedRequest(reference.pruned, reference.dataset, s)] for s in seeds])
                decided, keep, p_value = walk_decision(trial, base, self.settings, n_seeds,
                                                       self._noise.pooled(request.dataset), decisions)
                if not decided:
                    still.append(i)
                    continue
                if base is not None:
                    self._noise.add(request.dataset, trial - base)
                difference = 0.0 if base is None else float(np.mean(trial - base))
                told[i] = float(np.mean(trial)) if reference is None else _told(self._told[reference], difference, keep)
                self._decide(request, reference, n, p_value, keep, difference)
            open_ = still
            n += 1
        return [told[i] for i in range(len(requests))]

    def _decide(self, request: Request, reference: Request | None, seeds: int, p_value: float | None, keep: bool,
                difference: float) -> None:
        self._decisions.append({
            "round": self._rounds, "dataset": request.dataset, "n_pruned": len(request.pruned),
            "versus_n_pruned": None if reference is None else len(reference.pruned),
            "seeds": seeds, "p_value": p_value, "keep": bool(keep), "mean_difference": difference,
        })


def _told(reference: float, difference: float, keep: bool) -> float:
    """The reference's told score plus the mean paired difference, on the side of the decision (a
    difference too small to move a float must not flip what the strategy's own rule decides)."""
    score = reference + difference
    if keep and score < reference:
        return reference
    if not keep and score >= reference:
        return float(np.nextafter(reference, -math.inf))
    return score


def _pairs(heads: frozenset[Head]) -> list[list[int]]:
    return HeadSet(heads).pairs()


def _survivor_choice(result: dict, dropped: set[frozenset[Head]], compared: list[frozenset[Head]]) -> dict | None:
    """Where the rank sum puts a dropped candidate first, choose the best-ranked survivor instead
    (in place); returns what was replaced, or None. Rows name a k (H1: the candidate of `compared`
    with k heads) or a source dataset (H2/H3: its walk's pruned set)."""
    ranking = result.get("ranking") or []
    greedy = "per_dataset" in result

    def pruned_of(row: dict) -> frozenset[Head]:
        if greedy:
            return HeadSet(result["per_dataset"][row["model"]]["pruned_heads"])
        return next(p for p in compared if len(p) == row["k"])

    if not ranking or pruned_of(ranking[0]) not in dropped:
        return None
    survivor = next((row for row in ranking if pruned_of(row) not in dropped), None)
    if survivor is None:
        return None
    replaced = {"model": ranking[0]["model"], "n_pruned": ranking[0]["n_pruned"]}
    if greedy:
        result["chosen"] = survivor["model"]
    else:
        result["chosen_k"] = survivor["k"]
    result["pruned_heads"] = _pairs(pruned_of(survivor))
    return replaced
