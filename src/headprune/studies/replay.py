"""`headprune replay RUN_DIR`: how well racing would have done on a run that scored the complete grid.

A run with racing off holds, in its store, every seed of every candidate its searches asked for.
Replaying a race on it costs no evaluation: each race (`racing.Race`, the run's racing settings or
the defaults) is answered from the store, many times with the seed order permuted (seeded), and
compared with the grid's choice:

- H1 (and H2/H3 as whole searches): `agreement`, the fraction of replays choosing the grid's pruned
  set (`agreement_on_grid`: among the replays that stayed on the grid's path, below);
  `evaluation_fraction`, the mean of the race's seed evaluations over the grid's; for each
  model a race chose instead, how often, its rank in the grid's ranking, its rank-sum gap to the
  grid's choice, and whether it is within the noise of the grid's choice: the paired Wilcoxon
  signed-rank test over every (dataset, seed) of the two finds no difference at the racing
  confidence. An H2/H3 race that leaves the grid's path asks for scores the store lacks; such
  replays are counted as `left_the_grid` and as disagreements in `agreement` (a lower bound).
- H2/H3 step by step: on the path the full run took, each step's sequential decision
  (`walk.walk_decision`, seeds in the replay's order) against the full-seed rule: `agreement`
  of the decisions and `seed_fraction`, the step's own seeds the decisions used over all seeds
  (the reference's extra seeds are in the whole race's `evaluation_fraction`). H2's steps compared
  with the constant 0 (before anything is kept) are always kept after `first_test` seeds; they are
  counted apart (`against_zero`), not in the agreement. `path_agreement`: the fraction of replays
  in which every decision of the search's walks was the full-seed rule's (the raced walk kept the
  grid's path), with its one-sided 95% Clopper-Pearson lower bound (`path_agreement_lower_95`).
- H1's `noise_ceiling`: how reproducible the grid's choice is in the first place, with no racing.
  `subsets`: for each number of seeds b from `first_test` to all but one, the fraction of b-seed
  subsets on which the grid's own rule (every candidate, Algorithm 5) gives the grid's choice:
  every subset where there are at most `repeats` of them (`exhaustive` lists those b), else
  `repeats` random ones; `bootstrap`: the same for the run's number of seeds drawn with replacement
  (how often the protocol, rerun with other seeds of the same spread, would choose the same model).
  A reference, not a bound: it is what deciding at b seeds with the paper's rule gives. A race that
  spends few seeds on its losers and many on its contenders, or another rule, can do better on
  the same average; but where several candidates are within noise, each needs the seeds of the
  row that agrees.

Writes RUN_DIR/replay.json and returns its content."""

from __future__ import annotations

import functools
import itertools
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
from scipy import stats

from ..config import recorded_config
from ..errors import HeadpruneError
from ..heads import HeadSet
from ..racing import Race, RacingSettings, by_fidelity
from ..search import H1Strategy, H2Strategy, H3Strategy, Request, Strategy, run_strategies
from ..store import ResultStore
from ..summary import SUMMARY_FILE, load_summary, malformed
from ..verify import NotInStore, StoredScores
from ..walk import SeedNoise, walk_decision

REPLAY_FILE = "replay.json"
DEFAULT_REPEATS = 200
# What one low-fidelity evaluation (scoring.epochs = 0: prune, features, SVM) costs against one of
# the full grid, measured on one CPU core for configs/racing-check*.toml (300 tweets, 2 adjusting
# epochs): about 2.5 s against 13 s.
DEFAULT_SCREEN_COST = 0.2


def replay_run(run_dir: str | Path, repeats: int = DEFAULT_REPEATS, seed: int = 0,
               settings: RacingSettings | None = None,
               progress: Callable[[str], None] | None = None,
               low_fidelity: str | Path | None = None, screen_cost: float = DEFAULT_SCREEN_COST) -> dict:
    """Replay races on the complete grid of `run_dir` (see the module docstring); writes replay.json.

    `low_fidelity`: a run of the same H1 grid scored at a lower fidelity (e.g. scoring.epochs = 0):
    replay.json then has, per H1 search and dataset, the rank correlation of the candidates' means
    at both fidelities (`fidelity`), and the replayed races screened at the low fidelity first
    (`screened`: `racing.Race` with `screen="no-adjust"`, an F-Race at the low fidelity, then one
    among its survivors at the full fidelity), with their cost in full evaluations (a low one costs
    `screen_cost`) and, as without the screen, what they chose instead and whether it is within noise."""
    run_dir = Path(run_dir)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise HeadpruneError(f"--repeats must be a positive integer, got {repeats!r}")
    summary_path, store_path = run_dir / SUMMARY_FILE, run_dir / "store.sqlite"
    for path in (summary_path, store_path):
        if not path.is_file():
            raise HeadpruneError(f"{path}: file not found (is {run_dir} a finished run directory?)")
    low_paths = [] if low_fidelity is None else [Path(low_fidelity) / SUMMARY_FILE, Path(low_fidelity) / "store.sqlite"]
    for path in low_paths:  # before any replay: a mistake costs nothing
        if not path.is_file():
            raise HeadpruneError(f"--low-fidelity: {path}: file not found")
    summary = load_summary(summary_path)
    config = recorded_config(summary.need(summary.config, "config"), str(summary_path))
    if config.step2.racing:
        raise HeadpruneError(f"{run_dir}: this run raced (step2.racing = true), so its store lacks the complete grid "
                             "a replay needs; replay a run made with racing off")
    if settings is None:
        settings = config.step2.racing_settings()
    seeds = config.step2_seeds
    if settings.first_test > len(seeds):
        raise HeadpruneError(f"racing first test {settings.first_test} exceeds the run's {len(seeds)} Step 2 seeds")
    # [scoring] as recorded, not typed: it is the stored scores' key, which a default added since must not change
    scores, evaluate = _stored(store_path, summary.need(summary.model.fingerprint, "model.fingerprint"),
                               summary.config_value("scoring"))

    rng = np.random.default_rng(seed)
    out: dict = {
        "run_dir": str(run_dir), "repeats": repeats, "seed": seed, "seeds": seeds,
        "racing": asdict(settings),
        "searches": {},
    }
    ceiling_rng = np.random.default_rng([seed, 1])  # its own stream: the races' permutations stay as they were
    try:
        for key, make, grid, row_set in _searches(summary, config.step2.group_size):
            if progress:
                progress(f"replaying {key} {repeats} times")
            out["searches"][key] = _replay_search(make, grid, row_set, seeds, settings, repeats, rng, evaluate, scores)
            if key.startswith("h1."):
                out["searches"][key]["noise_ceiling"] = _noise_ceiling(make, _chosen_set(grid), seeds, settings,
                                                                       repeats, ceiling_rng, evaluate)
    except NotInStore as error:
        raise HeadpruneError(f"{store_path}: {error}: a replay needs every score of the grid the summary "
                             "reports (run `headprune verify` on it)") from None
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as error:
        raise malformed(summary_path, f"{type(error).__name__}: {error}") from None
    h1 = [entry for key, entry in out["searches"].items() if key.startswith("h1.")]
    if h1:
        out["agreement"] = float(np.mean([e["agreement"] for e in h1]))
        out["evaluation_fraction"] = float(np.mean([e["evaluation_fraction"] for e in h1]))
    steps = [e["steps"] for e in out["searches"].values() if e.get("steps")]
    if steps:
        total = sum(s["decisions"] for s in steps)
        out["step_agreement"] = sum(s["agreement"] * s["decisions"] for s in steps) / total
        out["step_seed_fraction"] = sum(s["seed_fraction"] * s["decisions"] for s in steps) / total
    if low_fidelity is not None:
        try:
            out.update(_fidelity(summary, scores, Path(low_fidelity), seeds, settings, repeats, seed, evaluate,
                                 screen_cost, out["searches"], progress))
        except NotInStore as error:
            raise HeadpruneError(f"--low-fidelity {low_fidelity}: {error}: it must score the same H1 grid "
                                 "(datasets, seeds, orders, k values)") from None
    (run_dir / REPLAY_FILE).write_text(json.dumps(out, indent=1) + "\n")
    return out


def _fidelity(summary, scores: StoredScores, low_dir: Path, seeds: list[int], settings: RacingSettings,
              repeats: int, seed: int, evaluate, screen_cost: float, searches: dict, progress) -> dict:
    """The low fidelity against the full one: rank correlations, and races screened at it."""
    low_path, store_path = low_dir / SUMMARY_FILE, low_dir / "store.sqlite"
    low = load_summary(low_path)
    if low.model.fingerprint != summary.model.fingerprint:
        raise HeadpruneError(f"--low-fidelity: {low_dir} scored model {low.model.fingerprint}, not "
                             f"{summary.model.fingerprint}")
    if recorded_config(low.need(low.config, "config"), str(low_path)).step2_seeds != seeds:
        raise HeadpruneError(f"--low-fidelity: {low_dir} used other Step 2 seeds than {seeds}")
    _, low_evaluate = _stored(store_path, low.model.fingerprint, low.config_value("scoring"))

    fidelity: dict = {}
    screened: dict = {}
    rng = np.random.default_rng(seed)
    for name, entry in (summary.h1 or {}).items():
        low_entry = (low.h1 or {}).get(name)
        if low_entry is None:
            continue
        ranked = [tuple(h) for h in summary.need((summary.orders or {}).get(name), f"orders.{name}").ranked]
        low_ranked = [tuple(h) for h in low.need((low.orders or {}).get(name), f"orders.{name}").ranked]
        if low_ranked != ranked or low_entry.k_values != entry.k_values:
            raise HeadpruneError(f"--low-fidelity: order {name} or its k values differ in {low_dir}")
        datasets, ks = list(entry.scores), entry.k_values
        if sorted(low_entry.scores) != sorted(datasets):
            raise HeadpruneError(f"--low-fidelity: {low_dir} scored H1 {name} on {sorted(low_entry.scores)}, "
                                 f"not {sorted(datasets)}")
        sets = {k: frozenset(ranked[len(ranked) - k:] if k else []) for k in ks}
        per_dataset = {}
        for ds in datasets:
            full = np.array([evaluate([(sets[k], ds, s) for s in seeds]) for k in ks])
            cheap = np.array([low_evaluate([(sets[k], ds, s) for s in seeds]) for k in ks])
            per_dataset[ds] = {
                "spearman": _corr(stats.spearmanr, full.mean(1), cheap.mean(1)),
                "pearson": _corr(stats.pearsonr, full.mean(1), cheap.mean(1)),
                "per_seed_spearman": _mean_defined([_corr(stats.spearmanr, full[:, i], cheap[:, i])
                                                    for i in range(len(seeds))]),
                "mean_difference": float(np.mean(cheap - full)),
            }
        fidelity[f"h1.{name}"] = per_dataset
        if progress:
            progress(f"replaying h1.{name} screened at the low fidelity {repeats} times")
        grid_set = HeadSet(entry.pruned_heads or [])
        grid_evaluations = len(ks) * len(datasets) * len(seeds)
        agree, costs, full_fractions = 0, [], []
        instead: dict[frozenset, int] = {}
        both = by_fidelity(evaluate, low_evaluate)
        for _ in range(repeats):
            order = [int(s) for s in rng.permutation(seeds)]
            race = Race(H1Strategy(ranked, datasets, k_values=ks), order, settings, screen="no-adjust")
            final = run_strategies({"s": race}, both)["s"]
            chosen = _chosen_set(final)
            if chosen == grid_set:
                agree += 1
            else:
                instead[chosen] = instead.get(chosen, 0) + 1
            full_fractions.append(final["evaluations"] / grid_evaluations)
            costs.append((final["evaluations"] + screen_cost * final["low_evaluations"]) / grid_evaluations)
        grid = entry.to_json()
        row_set = functools.partial(_least, ranked)
        screened[f"h1.{name}"] = {
            "agreement": agree / repeats, "evaluation_fraction": float(np.mean(full_fractions)),
            "cost_fraction": float(np.mean(costs)),
            "disagreements": [_disagreement(grid, row_set, chosen, count, seeds, settings, scores)
                              for chosen, count in sorted(instead.items(), key=lambda item: -item[1])],
            "unscreened": {"agreement": searches[f"h1.{name}"]["agreement"],
                           "evaluation_fraction": searches[f"h1.{name}"]["evaluation_fraction"]},
        }
    return {"low_fidelity": {"run_dir": str(low_dir), "scoring": low.config_value("scoring"),
                             "screen_cost": screen_cost},
            "fidelity": fidelity, "screened": screened}


def _mean_defined(values: list[float | None]) -> float | None:
    """The mean of the values that are defined; None if none is."""
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _corr(test, x: np.ndarray, y: np.ndarray) -> float | None:
    """A correlation coefficient; None where one side is constant (undefined)."""
    if np.all(x == x[0]) or np.all(y == y[0]):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(test(x, y)[0])
    return None if math.isnan(value) else value


def _stored(store_path: Path, model: str, scoring: dict):
    """The store's scores of `model` at `scoring` (`verify.StoredScores`, read once) and a race's
    evaluator answering from them, each request's score looked up once."""
    store = ResultStore(store_path)
    try:
        scores = StoredScores(store, model, scoring)
    finally:
        store.close()
    memo: dict = {}

    def evaluate(requests):
        missing = [r for r in requests if r not in memo]
        for request, f1 in zip(missing, scores.evaluate_seeds(missing)):
            memo[request] = f1
        return [memo[r] for r in requests]

    return scores, evaluate


def _searches(summary, group_size: int):
    """(key, strategy factory, the grid's result as a dict) for each search of the summary; an H2/H3
    entry without its own group size took the configuration's, `group_size`."""
    orders = summary.orders or {}
    for name, entry in (summary.h1 or {}).items():
        ranked = [tuple(h) for h in summary.need(orders.get(name), f"orders.{name}").ranked]
        datasets = list(entry.scores)
        yield (f"h1.{name}", lambda ranked=ranked, ds=datasets, ks=entry.k_values: H1Strategy(ranked, ds, k_values=ks),
               entry.to_json(), lambda row, ranked=ranked: _least(ranked, row))
    for strategy, cls in (("h2", H2Strategy), ("h3", H3Strategy)):
        for name, entry in summary.greedy(strategy).items():
            ranked = summary.need(orders.get(name), f"orders.{name}").ranked
            names = list(entry.per_dataset)
            group = entry.group_size or group_size
            grid = entry.to_json()
            yield (f"{strategy}.{name}", lambda ranked=ranked, ds=names, g=group, c=cls: c(ranked, ds, group_size=g),
                   grid, lambda row, grid=grid: _chosen_set(grid["per_dataset"][row["model"]]))


def _least(ranked: list, row: dict) -> frozenset:
    """H1's candidate of a ranking row: its k least important heads (k is n_pruned where a row has no k)."""
    k = row.get("k")
    k = row["n_pruned"] if k is None else k
    return frozenset(ranked[len(ranked) - k:] if k else [])


def _chosen_set(result: dict) -> frozenset:
    return HeadSet(result["pruned_heads"])


def _replay_search(make: Callable[[], Strategy], grid: dict, row_set: Callable[[dict], frozenset], seeds: list[int],
                   settings: RacingSettings, repeats: int, rng: np.random.Generator, evaluate,
                   scores: StoredScores) -> dict:
    grid_set = _chosen_set(grid)
    greedy = "per_dataset" in grid
    agree = left = 0
    fractions: list[float] = []
    instead: dict[frozenset, int] = {}
    full = _full_result(make, seeds, evaluate)
    if _chosen_set(full[0]) != grid_set:
        raise HeadpruneError("the store's complete grid does not give the summary's choice "
                             f"({sorted(_chosen_set(full[0]))} vs {sorted(grid_set)}): run `headprune verify` first")
    grid_evaluations = len(full[1]) * len(seeds)
    step_stats = _StepStats() if greedy else None
    for _ in range(repeats):
        order = [int(s) for s in rng.permutation(seeds)]
        if step_stats is not None:
            step_stats.replay(full[2], order, settings, len(seeds), evaluate)
        try:
            result = run_strategies({"race": Race(make(), order, settings)}, evaluate)["race"]
        except NotInStore:
            left += 1
            continue
        fractions.append(result["evaluations"] / grid_evaluations)
        chosen = _chosen_set(result)
        if chosen == grid_set:
            agree += 1
        else:
            instead[chosen] = instead.get(chosen, 0) + 1
    replayed = repeats - left
    entry: dict = {
        "grid_choice": _describe(grid, grid_set, row_set),
        "agreement": agree / repeats,  # a replay that left the grid counts as a disagreement
        "agreement_on_grid": agree / replayed if replayed else None,
        "evaluation_fraction": float(np.mean(fractions)) if fractions else None,
        "grid_evaluations": grid_evaluations,
        "replayed": replayed,
        "disagreements": [_disagreement(grid, row_set, chosen, count, seeds, settings, scores)
                          for chosen, count in sorted(instead.items(), key=lambda item: -item[1])],
    }
    if greedy:
        entry["left_the_grid"] = left
        entry["steps"] = step_stats.to_json()
    return entry


def _full_result(make: Callable[[], Strategy], seeds: list[int], evaluate):
    """The grid's own search, re-run from the store with every seed: (result, its distinct requests,
    its walk steps [(request, versus, the walk's decisions)])."""
    strategy = make()
    steps: list[tuple[Request, Request | None, int | None]] = []
    while not strategy.done:
        round_ = strategy.round()
        if round_.kind == "walk":
            steps += [(r, v, round_.decisions) for r, v in zip(round_.requests, round_.versus)]
        requests = round_.requests
        values = evaluate([(r.pruned, r.dataset, s) for r in requests for s in seeds])
        n = len(seeds)
        strategy.tell([float(np.mean(values[i * n:(i + 1) * n])) for i in range(len(requests))])
    return strategy.result(), strategy.asked, steps


def _noise_ceiling(make: Callable[[], Strategy], grid_set: frozenset, seeds: list[int], settings: RacingSettings,
                   repeats: int, rng: np.random.Generator, evaluate) -> dict:
    """The grid's rule on fewer seeds (random subsets) and on resampled seeds (the bootstrap): how
    often it still chooses `grid_set` (see the module docstring)."""
    def agreement(draws: list[list[int]]) -> float:
        return sum(_chosen_set(_full_result(make, draw, evaluate)[0]) == grid_set for draw in draws) / len(draws)

    n = len(seeds)
    subsets, exhaustive = {}, []
    for b in range(min(settings.first_test, n), n):
        if math.comb(n, b) <= repeats:
            draws = [list(c) for c in itertools.combinations(seeds, b)]
            exhaustive.append(b)
        else:
            draws = [[int(s) for s in rng.choice(seeds, size=b, replace=False)] for _ in range(repeats)]
        subsets[str(b)] = agreement(draws)
    bootstrap = agreement([[int(s) for s in rng.choice(seeds, size=n)] for _ in range(repeats)])
    return {"subsets": subsets, "exhaustive": exhaustive, "bootstrap": bootstrap, "repeats": repeats}


class _StepStats:
    """H2/H3's decisions on the full run's path, sequential (seeds in a replay's order) vs all seeds;
    a replay keeps the path where every one of its decisions is the full-seed rule's."""

    def __init__(self) -> None:
        self.decisions = self.agree = self.seeds_used = self.seeds_total = self.against_zero = 0
        self.paths = self.paths_kept = 0

    def replay(self, steps, order: list[int], settings: RacingSettings, n_seeds: int, evaluate) -> None:
        noise = SeedNoise()  # as a race pools it: the steps before, on the same dataset
        disagreed = self.decisions - self.agree
        for request, versus, decisions in steps:
            if versus is None:
                self.against_zero += 1
                continue
            trial = np.array(evaluate([(request.pruned, request.dataset, s) for s in order]))
            base = np.array(evaluate([(versus.pruned, versus.dataset, s) for s in order]))
            full = float(np.mean(trial - base)) >= 0
            n = min(settings.first_test, n_seeds)
            while True:
                decided, keep, _ = walk_decision(trial[:n], base[:n], settings, n_seeds,
                                                 noise.pooled(request.dataset), decisions)
                if decided:
                    break
                n += 1
            noise.add(request.dataset, trial[:n] - base[:n])
            self.decisions += 1
            self.agree += int(keep == full)
            self.seeds_used += n
            self.seeds_total += n_seeds
        self.paths += 1
        self.paths_kept += int(self.decisions - self.agree == disagreed)

    def to_json(self) -> dict:
        return {"decisions": self.decisions, "against_zero": self.against_zero,
                "agreement": self.agree / self.decisions if self.decisions else None,
                "seed_fraction": self.seeds_used / self.seeds_total if self.seeds_total else None,
                "path_agreement": self.paths_kept / self.paths if self.paths else None,
                "path_agreement_lower_95": lower_bound(self.paths_kept, self.paths) if self.paths else None}


def lower_bound(successes: int, trials: int, confidence: float = 0.95) -> float:
    """The one-sided Clopper-Pearson lower confidence bound of a binomial proportion."""
    if successes == 0:
        return 0.0
    return float(stats.beta.ppf(1 - confidence, successes, trials - successes + 1))


def _describe(grid: dict, pruned: frozenset, row_set: Callable[[dict], frozenset]) -> dict:
    """A candidate as the grid's ranking names it: its row's model, heads pruned, rank and rank sum."""
    for rank, row in enumerate(grid["ranking"], start=1):
        if row_set(row) == pruned:
            return {"model": row["model"], "n_pruned": row["n_pruned"], "grid_rank": rank, "rank_sum": row["rank_sum"]}
    return {"model": None, "n_pruned": len(pruned), "grid_rank": None, "rank_sum": None}


def _disagreement(grid: dict, row_set: Callable[[dict], frozenset], chosen: frozenset, count: int, seeds: list[int],
                  settings: RacingSettings, scores: StoredScores) -> dict:
    """How far a race's other choice is from the grid's: grid rank, rank-sum gap, and the paired
    Wilcoxon test over every (dataset, seed) of the two."""
    described = _describe(grid, chosen, row_set)
    datasets = list(grid["ranking"][0]["ranks"])
    best = grid["ranking"][0]["rank_sum"]
    mine = [x for ds in datasets for x in scores.seed_scores(sorted(chosen), ds, seeds)]
    theirs = [x for ds in datasets for x in scores.seed_scores(sorted(_chosen_set(grid)), ds, seeds)]
    p_value = 1.0
    if any(a != b for a, b in zip(mine, theirs)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p_value = float(stats.wilcoxon(mine, theirs).pvalue)
    return {**described, "count": count,
            "rank_sum_gap": None if described["rank_sum"] is None else described["rank_sum"] - best,
            "mean_f1_difference": float(np.mean(np.subtract(mine, theirs))),
            "p_value": None if math.isnan(p_value) else p_value,
            "within_noise": math.isnan(p_value) or not p_value < settings.alpha}


__all__ = ["DEFAULT_REPEATS", "REPLAY_FILE", "replay_run"]
