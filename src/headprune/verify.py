"""Check a run's summary.json against its results store.

Every number the summary reports is recomputed from what the store holds: each Step 1 order (OI,
OI-layer, fisher) from the stored rows of the Step 1 datasets (selected by the content hashes the
summary records), reduced as its criterion does, each random order from its seed, each order's
stability from the same per-run matrices, each H1/H2/H3 score (and H1's per-seed scores) from the
stored per-seed F1, the rankings and chosen models from those scores, and the generalization table
and the G2 comparisons, on the selection seeds (Tables 7-10) and on fresh seeds (per-seed scores,
means, standard deviations, paired t-tests). A magnitude order is checked against
its own matrix only (the matrix is the checkpoint's weight norms: verify loads no model, and says
so). A summary that passes says nothing the store does not."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from .analysis import complete_of, order_comparison, overview
from .config import parse_fresh_seeds, parse_seeds
from .curves import DEFAULT_SAFE_K_MARGIN
from .data import expand_datasets
from .errors import HeadpruneError
from .generalize import mean_and_std, per_seed_means, random_order_members, significance, summarize
from .heads import HeadSet
from .importance import (
    Order,
    RandomImportance,
    RunMatrix,
    Step1Criterion,
    criterion_for,
    order_stability,
    random_order,
    rank_heads,
)
from .importance.gradient import stored_row
from .search import rank_models
from .settings import ScoreSettings
from .store import ResultStore
from .summary import (
    COMPLETE,
    SUMMARY_FILE,
    Generalization,
    OrderEntry,
    Significance,
    Stability,
    Summary,
    load_summary,
    malformed,
)

# What a stored score's settings must match (max_length is keyed as min(setting, model's limit)).
SCORE_FIELDS = tuple(f.name for f in fields(ScoreSettings) if f.name != "max_length")
TOLERANCE = 1e-9


@dataclass
class Verification:
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was checked less strictly than it could be, and why

    def close(self, what: str, reported, recomputed) -> None:
        """Count one check; a problem when the reported and the recomputed value differ."""
        self.checked += 1
        if recomputed is None:
            self.problems.append(f"{what}: not in the store")
        elif not _same(reported, recomputed):
            self.problems.append(f"{what}: summary says {reported!r}, the store gives {recomputed!r}")

    def same_tree(self, what: str, reported, recomputed) -> None:
        """Count one check of a whole JSON part (nulls included); a problem names its first leaf that
        differs, or says that the parts have other keys."""
        self.checked += 1
        mine, theirs = _leaves(reported), _leaves(recomputed)
        if [k for k, _ in mine] != [k for k, _ in theirs]:
            self.problems.append(f"{what}: summary has other keys than the store gives")
            return
        for (key, a), (_, b) in zip(mine, theirs):
            if not (a is None and b is None) and (a is None or b is None or not _same(a, b)):
                self.problems.append(f"{what}{key}: summary says {a!r}, the store gives {b!r}")
                return


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=0.0, abs_tol=TOLERANCE) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


class StoredScores:
    """Stored per-seed F1 of the run's model and scoring settings, by (pruned set, dataset, seed)."""

    def __init__(self, store: ResultStore, model: str, scoring: dict):
        self.values: dict[tuple[str, str, int], set[float]] = {}
        self.low: StoredScores | None = None  # the low fidelity of a screened race (scoring.epochs = 0)
        for row in store.all_scores():
            if row["model"] != model:
                continue
            settings = json.loads(row["settings"])
            if any(settings.get(k) != scoring.get(k) for k in SCORE_FIELDS if k in scoring):
                continue
            self.values.setdefault((row["pruned"], row["dataset"], int(row["seed"])), set()).add(float(row["f1"]))

    def seed_scores(self, pruned, dataset: str, seeds: list[int]) -> list[float] | None:
        key = HeadSet(pruned).key()
        out = []
        for seed in seeds:
            found = self.values.get((key, dataset, seed))
            if not found:
                return None
            if len(found) > 1:
                raise HeadpruneError(
                    f"the store holds {len(found)} different scores for {dataset}, seed {seed}, pruned {key} "
                    "(runs with other engines or settings share it): cannot verify unambiguously"
                )
            out.append(next(iter(found)))
        return out

    def seed_score(self, pruned, dataset: str, seed: int) -> float | None:
        """One seed's stored F1; None if the store lacks it."""
        found = self.seed_scores(pruned, dataset, [seed])
        return None if found is None else found[0]

    def mean(self, pruned, dataset: str, seeds: list[int]) -> float | None:
        scores = self.seed_scores(pruned, dataset, seeds)
        return None if scores is None else float(np.mean(scores))

    def evaluate_seeds(self, requests) -> list[float]:
        """A race's evaluator (`racing.SeedRequest`s -> F1) answered from the store alone; a request
        the store lacks raises `NotInStore`."""
        out = []
        for pruned, dataset, seed, *_ in requests:
            found = self.seed_score(pruned, dataset, int(seed))
            if found is None:
                raise NotInStore(f"the store holds no score for {dataset}, seed {seed}, pruned {HeadSet(pruned).key()}")
            out.append(found)
        return out


class NotInStore(LookupError):
    """A score a store-only evaluation needed is not in the store."""


def verify_run(run_dir: str | Path) -> Verification:
    """Recompute the summary's numbers from the store of `run_dir` (summary.json + store.sqlite)."""
    run_dir = Path(run_dir)
    summary_path, store_path = run_dir / SUMMARY_FILE, run_dir / "store.sqlite"
    for path in (summary_path, store_path):
        if not path.is_file():
            raise HeadpruneError(f"{path}: file not found (is {run_dir} a finished run directory?)")
    summary = load_summary(summary_path)
    store = ResultStore(store_path)
    try:
        result = Verification()
        scores = StoredScores(store, summary.need(summary.model.fingerprint, "model.fingerprint"),
                         summary.config_value("scoring"))
        if summary.config_value("step2").get("racing_screen"):  # a screened race's low fidelity
            low_scoring = {**summary.config_value("scoring"), "epochs": 0}
            scores.low = StoredScores(store, summary.model.fingerprint, low_scoring)
        _check_orders(store, summary, result)
        selection = parse_seeds(summary.config_value("step2", "seeds"))
        seed_curves = _check_step2(summary, scores, selection, result)
        _check_order_comparison(summary, scores, seed_curves, selection, result)
        _check_generalization(summary, scores, result)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as error:
        # Parts that do not fit together (an order, a dataset or a model named but not there): one line.
        raise malformed(summary_path, f"{type(error).__name__}: {error}") from None
    finally:
        store.close()
    return result


def _pairs(heads) -> list[list[int]]:
    """An order's heads as [[layer, head], ...], in its order, as summary.json writes them (so that a
    problem quotes them the same way)."""
    return [list(h) for h in heads]


def _check_orders(store: ResultStore, summary: Summary, result: Verification) -> None:
    """Every order of the summary, by its criterion (`importance.criterion_for`): a Step 1 order's
    matrix and ranking from the stored rows (`_check_step1`); a random order is its seed's
    permutation; a weights order (magnitude) is ranked as its matrix says, the matrix itself not
    recomputed (it is the checkpoint's weight norms; verify reads only the summary and the store,
    never the model), and the verification notes so. Each order's stability is recomputed from the
    same per-run matrices (it is pure and seeded)."""
    for name, entry in (summary.orders or {}).items():
        criterion = criterion_for(name)
        runs = None
        if isinstance(criterion, Step1Criterion):
            if entry.matrix is None:
                continue
            runs = _check_step1(store, summary, name, entry, criterion, result)
            if runs is None:
                continue
        elif isinstance(criterion, RandomImportance):
            expected = random_order(summary.model.n_layers, summary.model.n_heads, seed=criterion.seed)
            result.close(f"order {name} (the random order of seed {criterion.seed})", _pairs(entry.ranked),
                         _pairs(expected.ranked))
        elif entry.matrix is not None:
            result.close(f"order {name} (ranked by its matrix)", _pairs(entry.ranked),
                         _pairs(rank_heads(np.array(entry.matrix))))
            result.notes.append(f"order {name}: its matrix (the norms of the checkpoint's weights) is not "
                                "recomputed, since verify reads no model; its ranking is checked against it")
        if entry.stability is not None:
            stability = entry.stability
            bottom_k = stability.bootstrap.bottom_k if stability.bootstrap else {}
            order = Order(name=name, ranked=list(entry.ranked), n_layers=summary.model.n_layers,
                          n_heads=summary.model.n_heads, kind=entry.kind or criterion.kind, runs=runs)
            recomputed = order_stability(order, [int(k) for k in bottom_k],
                                         **({"resamples": stability.bootstrap.resamples,
                                             "seed": stability.bootstrap.seed} if stability.bootstrap else {}))
            result.same_tree(f"orders.{name}.stability", stability.to_json(),
                             Stability.from_json(recomputed).to_json())


def _check_step1(store: ResultStore, summary: Summary, name: str, order: OrderEntry, criterion: Step1Criterion,
                 result: Verification) -> list[RunMatrix] | None:
    """A Step 1 order's matrix and ranking from the stored rows of the run's datasets, seeds and keyed
    settings (OI: the rows of Algorithm 2's matrices; OI-layer, fisher: the raw statistics rows, keyed
    apart), reduced as its criterion reduces them (`Step1Criterion.epoch_matrices`). Rows are selected
    by the datasets' content hashes (the dataset part of their keys): a row stored under a dataset's
    name says nothing about its content, so a file of the same name with other content must not
    count, and a renamed file's rows must. Summaries without the hashes (older runs) are checked by
    name, and the verification says so. Returns the per-run matrices (None: rows missing)."""
    seeds = parse_seeds(summary.config_value("step1", "seeds"))
    # The keyed settings the run used (with where its pooler came from); older summaries lack them.
    settings = order.settings or {k: summary.config_value("step1", k)
                                  for k in ("epochs", "batch_size", "learning_rate", "adam_epsilon")}
    rows = [row for row in store.importance_rows(summary.model.fingerprint)
            if row["seed"] in seeds and row["settings"] == settings]
    stored: list[tuple[str, int, object]] = []
    if order.dataset_hashes is None:
        names = {Path(n).stem if Path(n).suffix.lower() in (".csv", ".tsv", ".jsonl") else n
                 for n in expand_datasets(summary.config_value("step1", "datasets"))}
        result.notes.append("summary.json records no content hashes of the Step 1 datasets (a run of an older "
                            "version): Step 1 rows were selected by dataset name, which does not tell an edited "
                            "file from the one the run used")
        stored = [(row["dataset"], row["seed"], row["matrices"]) for row in rows if row["dataset"] in names]
        if not stored:
            result.close(f"Step 1 order {name}", "an importance matrix", None)
            return None
    else:
        by_key = {(row["dataset_hash"], row["seed"]): row["matrices"] for row in rows}
        for dataset, content in order.dataset_hashes.items():
            for seed in seeds:  # every (dataset, seed) the order averages over, in the order Step 1 runs them
                found = by_key.get((content, seed))
                if found is None:
                    result.close(f"Step 1 importance matrices of {dataset} (content {content[:12]}), seed {seed}",
                                 "stored matrices", None)
                    return None
                stored.append((dataset, seed, found))
    per_run = [(dataset, seed, criterion.epoch_matrices(stored_row(criterion.row, value)))
               for dataset, seed, value in stored]
    mean = np.mean(np.array([m for _, _, matrices in per_run for m in matrices], dtype=np.float64), axis=0)
    result.close(f"Step 1 importance matrix ({name})", order.matrix, mean.tolist())
    result.close(f"Step 1 order ({name})", _pairs(order.ranked), [list(h) for h in rank_heads(mean)])
    return [RunMatrix(dataset, seed, np.mean(np.array(matrices, dtype=np.float64), axis=0).tolist())
            for dataset, seed, matrices in per_run]


def _leaves(value, key: str = "") -> list[tuple[str, object]]:
    """(path, value) of every leaf of a JSON value, in order: what `Verification.same_tree` compares."""
    if isinstance(value, dict):
        return [leaf for name, item in value.items() for leaf in _leaves(item, f"{key}.{name}")]
    if isinstance(value, (list, tuple)):
        return [leaf for i, item in enumerate(value) for leaf in _leaves(item, f"{key}[{i}]")]
    return [(key, value)]


def _raced(strategy, entry, scores: StoredScores) -> dict | None:
    """A raced search re-run from the store with its recorded seed order and settings (a race is
    deterministic given its scores), so that every number it reported can be compared; None when
    the store lacks a score the race needs."""
    from .racing import Race, RacingSettings, by_fidelity
    from .search import run_strategies

    racing = entry.racing
    settings = RacingSettings(racing.confidence, racing.first_test, racing.walk_test)
    race = Race(strategy, racing.seeds, settings, screen=racing.screen)
    low = scores.low.evaluate_seeds if scores.low is not None else None
    try:
        return run_strategies({"race": race}, by_fidelity(scores.evaluate_seeds, low))["race"]
    except NotInStore:
        return None


def _check_raced(key: str, entry, rerun: dict | None, summary: Summary, result: Verification) -> None:
    """Every number of a raced search's entry against the race re-run from the store; its racing
    settings and seed order against the run's configuration."""
    step2 = summary.config_value("step2")
    racing = entry.racing
    result.close(f"{key}.racing.seeds", racing.seeds, parse_seeds(step2["seeds"], "step2.seeds"))
    result.close(f"{key}.racing.confidence", racing.confidence, step2.get("racing_confidence"))
    result.close(f"{key}.racing.first_test", racing.first_test, step2.get("racing_first_test"))
    if rerun is None:
        result.close(f"{key} (raced)", "a race", None)
        return
    reported = entry.to_json()
    result.close(f"{key}.racing.screen", racing.screen or "", step2.get("racing_screen", ""))
    for part in ("k_values", "scores", "cross", "complete", "ranking", "chosen_k", "chosen", "pruned_heads",
                 "evaluations", "grid_evaluations", "low_evaluations"):
        if part in reported or part in rerun:
            result.close(f"{key}.{part}", reported.get(part), rerun.get(part))
    if "per_dataset" in reported:
        for ds, model in reported["per_dataset"].items():
            result.close(f"{key}.per_dataset.{ds}", model, rerun["per_dataset"].get(ds))
    for part in ("eliminations", "decisions", "chosen_instead"):
        mine, theirs = reported["racing"].get(part), rerun["racing"][part]
        if mine is None and theirs is None:  # nothing chosen instead, in both
            result.checked += 1
        else:
            result.close(f"{key}.racing.{part}", mine, theirs)


def _check_step2(summary: Summary, scores: StoredScores, seeds: list[int], result: Verification
                 ) -> dict[str, dict[str, dict[str, list[float | None]]]]:
    """H1/H2/H3 from the stored scores; returns H1's per-seed scores as the store gives them (the
    summary's where the store lacks one, a problem already counted), by order."""
    from .search import H1Strategy, H2Strategy, H3Strategy

    orders = summary.orders or {}
    seed_curves: dict[str, dict[str, dict[str, list[float | None]]]] = {}
    for name, h1 in (summary.h1 or {}).items():
        ranked = summary.need(orders.get(name), f"orders.{name}").ranked
        for ds, per_k in (h1.seed_scores or {}).items():
            for k, reported_seeds in per_k.items():
                pruned = ranked[len(ranked) - int(k):] if int(k) > 0 else []
                given = h1.seeds_given(int(k), seeds)
                stored = [scores.seed_score(pruned, ds, seed) if seed in given else None for seed in h1.seeds or seeds]
                found = any(s is not None for s in stored)
                result.close(f"h1.{name}.seed_scores.{ds}.{k}", reported_seeds, stored if found else None)
                seed_curves.setdefault(name, {}).setdefault(ds, {})[k] = stored if found else reported_seeds
        if h1.racing is not None:
            strategy = H1Strategy([tuple(h) for h in ranked], list(h1.scores), k_values=h1.k_values)
            _check_raced(f"h1.{name}", h1, _raced(strategy, h1, scores), summary, result)
            continue
        by_k: dict[str, dict[str, float]] = {}
        for ds, per_k in h1.scores.items():
            for k, reported in per_k.items():
                pruned = ranked[len(ranked) - int(k):] if int(k) > 0 else []
                recomputed = scores.mean(pruned, ds, seeds)
                result.close(f"h1.{name}.scores.{ds}.{k}", reported, recomputed)
                by_k.setdefault(k, {})[ds] = reported if recomputed is None else recomputed
        ranking = rank_models(by_k, {k: int(k) for k in by_k})
        result.close(f"h1.{name}.chosen_k", h1.chosen_k, int(ranking[0]["model"]))
    for strategy in ("h2", "h3"):
        for name, entry in summary.greedy(strategy).items():
            per_dataset = entry.per_dataset
            if entry.racing is not None:
                ranked = [tuple(h) for h in summary.need(orders.get(name), f"orders.{name}").ranked]
                search = {"h2": H2Strategy, "h3": H3Strategy}[strategy](ranked, list(per_dataset),
                                                                         group_size=entry.group_size or 1)
                _check_raced(f"{strategy}.{name}", entry, _raced(search, entry, scores), summary, result)
                continue
            for ds, model in per_dataset.items():
                if model.score is not None:
                    result.close(f"{strategy}.{name}.per_dataset.{ds}.score", model.score,
                                 scores.mean(model.pruned_heads, ds, seeds))
            cross: dict[str, dict[str, float]] = {}
            for source, row in entry.cross.items():
                source_model = summary.need(per_dataset.get(source), f"{strategy}.{name}.per_dataset.{source}")
                for ds, reported in row.items():
                    recomputed = scores.mean(source_model.pruned_heads, ds, seeds)
                    result.close(f"{strategy}.{name}.cross.{source}.{ds}", reported, recomputed)
                    cross.setdefault(source, {})[ds] = reported if recomputed is None else recomputed
            for ds, reported in (entry.complete or {}).items():
                result.close(f"{strategy}.{name}.complete.{ds}", reported, scores.mean([], ds, seeds))
            ranking = rank_models(cross, {s: per_dataset[s].n_pruned for s in cross})
            result.close(f"{strategy}.{name}.chosen", entry.chosen, ranking[0]["model"])
            pruned = summary.need(entry.pruned_heads, f"{strategy}.{name}.pruned_heads")
            result.close(f"{strategy}.{name}.pruned_heads", HeadSet(pruned).pairs(),
                         HeadSet(per_dataset[ranking[0]["model"]].pruned_heads).pairs())
    return seed_curves


def _check_order_comparison(summary: Summary, scores: StoredScores, seed_curves: dict, seeds: list[int],
                            result: Verification) -> None:
    """"Which order prunes best" (`analysis.order_comparison`) recomputed from the stored per-seed
    scores of H1 and of the complete model on G2, with the configuration's alpha and margin."""
    reported = summary.order_comparison
    if reported is None:
        if len(summary.h1 or {}) > 1:
            result.notes.append("summary.json holds no order comparison (a run before schema 7): the report "
                                "shows none, and nothing of it is checked")
        return
    complete = {ds: scores.seed_scores([], ds, seeds) or reported_scores
                for ds, reported_scores in complete_of(summary.step2_comparison).items()}
    generalization = summary.config_value("generalization")
    recomputed = order_comparison(summary.h1 or {}, summary.orders or {}, complete, generalization["alpha"],
                                  generalization.get("safe_k_margin", DEFAULT_SAFE_K_MARGIN), seed_curves)
    result.same_tree("order_comparison", reported.to_json(), None if recomputed is None else recomputed.to_json())


def _check_generalization(summary: Summary, scores: StoredScores, result: Verification) -> None:
    if summary.generalization is not None:
        means = _check_comparison("generalization", summary.generalization, summary, scores,
                                  list(summary.generalization_seeds or []), result)
        if summary.overview is not None:
            result.same_tree("overview", {m: row.to_json() for m, row in summary.overview.items()},
                             {m: row.to_json() for m, row in overview(means).items()})
    selection = parse_seeds(summary.config_value("step2", "seeds"))
    if summary.step2_comparison is not None:
        _check_comparison("step2_comparison", summary.step2_comparison, summary, scores, selection, result)
    if summary.step2_fresh_comparison is not None:
        fresh = summary.need(summary.step2_fresh_seeds, "step2_fresh_seeds")
        # The seeds the configuration names, and none of them a selection seed (else the table is biased).
        result.close("step2_fresh_seeds", fresh, parse_fresh_seeds(summary.config_value("step2", "fresh_seeds"),
                                                                    selection))
        result.close("step2_fresh_seeds disjoint from step2.seeds", sorted(set(fresh) & set(selection)), [])
        _check_comparison("step2_fresh_comparison", summary.step2_fresh_comparison, summary, scores, fresh, result)


def _check_comparison(key: str, table: Generalization, summary: Summary, scores: StoredScores, seeds: list[int],
                      result: Verification) -> dict[str, dict[str, float]]:
    """A comparison table (G3: Tables 12, 15; G2: Tables 7-10) from the stored per-seed scores: each
    chosen model's scores, the per-seed random-order means (MAM), their means, stds, % vs CM and the
    paired t-tests. Returns each model's mean per dataset as the store gives it (the table's where the
    store has no scores for it)."""
    per_seed: dict[str, dict[str, list[float]]] = {}
    stored_models: dict[str, dict[str, list[float]]] = {}
    for model, entry in (summary.chosen or {}).items():
        for ds in _datasets_of(table):
            stored = scores.seed_scores(entry.pruned_heads, ds, seeds)
            if stored is not None:
                stored_models.setdefault(model, {})[ds] = stored
            if model in table.models and ds in table.models[model]:
                cell = table.models[model][ds]
                result.close(f"{key}.{model}.{ds}.scores", cell.scores, stored)
                per_seed.setdefault(model, {})[ds] = cell.scores if stored is None else stored
    random_orders = {name for name, order in (summary.orders or {}).items() if order.is_random}
    members = random_order_members({m: (e.order, e.strategy) for m, e in (summary.chosen or {}).items()},
                                   random_orders)
    means = per_seed_means(stored_models, {m: v for m, v in members.items() if m in table.models
                                           and all(x in stored_models for x in v)})
    for model, row in means.items():
        for ds, values in row.items():
            if ds in table.models[model]:
                result.close(f"{key}.{model}.{ds}.scores", table.models[model][ds].scores, values)
                per_seed.setdefault(model, {})[ds] = values
    for model, row in table.models.items():  # the times' means and stds are those of the times listed
        for ds, cell in row.items():
            for part, seconds, mean, std in (("adjust", cell.adjust_seconds, cell.adjust_mean, cell.adjust_std),
                                             ("engine_adjust", cell.engine_adjust_seconds, cell.engine_adjust_mean,
                                              cell.engine_adjust_std)):
                if seconds and mean is not None:
                    result.close(f"{key}.{model}.{ds}.{part}_mean, {part}_std", [mean, std],
                                 list(mean_and_std(seconds)))
    means = {m: {ds: cell.mean for ds, cell in row.items()} for m, row in table.models.items()}
    if not per_seed or COMPLETE not in per_seed:
        return means
    recomputed = summarize(per_seed, reference=COMPLETE)
    for model, row in recomputed.items():
        means[model].update({ds: cell["mean"] for ds, cell in row.items()})
    for model, row in recomputed.items():
        for ds, cell in row.items():
            for name in ("mean", "std", "pct_vs_cm"):
                result.close(f"{key}.{model}.{ds}.{name}", getattr(table.models[model][ds], name), cell[name])
    alpha = summary.config_value("generalization", "alpha")

    def rows(items: list[Significance]):
        return sorted((r.dataset, r.better, r.worse, round(r.p_value, 12)) for r in items)

    result.close(f"{key}.significance", rows(table.significance),
                 rows([Significance.from_json(r) for r in significance(per_seed, alpha=alpha)]))
    return means


def _datasets_of(table: Generalization) -> list[str]:
    return list(dict.fromkeys(ds for row in table.models.values() for ds in row))


__all__ = ["Verification", "verify_run"]
