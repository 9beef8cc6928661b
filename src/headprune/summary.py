"""The typed summary.json: the one home of its schema, written once by the pipeline, read by report,
verify and export.

Every part is a dataclass whose fields are the JSON keys, in the order they are written. Their
`from_json`/`to_json` come from one converter (`records.JsonRecord`), driven by the field annotations, so reading
and writing cannot drift apart and a malformed part is refused with the key path at fault
('h1.OI.ranking[0].rank_sum'). Keys that older or hand-written summaries may lack are optional
(`optional()`: None when absent, left out when None); a field with a plain None default is nullable
and always written. A file without `schema_version` is version 1: the same shape, read as is.

Longer than most modules (about 600 lines) on purpose: it is the schema of one document, about 40
small record classes in the order their parts appear in summary.json, so that the whole schema reads
in one place; the generic reading and writing is `records.py`'s."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import HeadpruneError, parse_user_file
from .names import COMPLETE
from .records import (
    MINIMUM,
    NOT_JSON,
    JsonRecord,
    MalformedSummary,
    as_object,
    join_key,
    missing_key,
    optional,
    read_value,
    write_value,
)

# 1: the shape of 2, before the file said its version; 3: adds step2_comparison (Tables 7-10), the
# per-seed MAM models in the comparisons, Table 14's per-model timing fields and `inference`; 4: adds
# each search's `evaluations`, `grid_evaluations` and `racing`, each order's `stability` and H1's
# per-seed scores (`seeds`, `seed_scores`, whose entries are null for seeds a race did not score,
# since 2026-12-02, even where the store holds them, since 2026-12-02 06:00 UTC), all optional; 5: adds
# `budget` (optional); 6: adds `step2_fresh_comparison` and `step2_fresh_seeds` (optional); 7: adds
# `order_comparison` and `overview` (optional), the statistics the report shows beside the scores, and
# the mean and std of the batched engine's times (`engine_adjust_mean`, `engine_adjust_std`).
SCHEMA_VERSION = 7
SUMMARY_FILE = "summary.json"
# The racing walk test (`racing.WALK_TESTS`) a run's configuration or a race's record without the key used.
WALK_TEST_BEFORE = "t-test"

T = TypeVar("T")


def malformed(path: str | os.PathLike | None, detail: str) -> HeadpruneError:
    """The one-line error for a summary that cannot be used (the same words wherever it is found)."""
    return HeadpruneError(
        f"{path or SUMMARY_FILE}: not a headprune run summary this version can check (malformed summary: {detail})"
    )


# ----------------------------------------------------------------------------- the run's head


@dataclass(kw_only=True)
class ModelInfo(JsonRecord):
    """The base model of the run (summary["model"])."""

    name: str | None = optional()
    fingerprint: str | None = optional()
    n_layers: int = field(metadata={MINIMUM: 1})
    n_heads: int = field(metadata={MINIMUM: 1})
    mlm_head: dict | None = optional()  # scoring.BaseModel.info: whether the MLM head was fresh, its warm-up
    n_params: int | None = optional()
    size_bytes: int | None = optional()


@dataclass(kw_only=True)
class Agreement(JsonRecord):
    """The mean Spearman correlation between pairs of Step 1 runs (`importance.stability.agreement`):
    over all heads, and within layers (the mean over layers); null where no pair defines it."""

    pairs: int = field(metadata={MINIMUM: 0})
    spearman: float | None = None
    spearman_within_layers: float | None = None


@dataclass(kw_only=True)
class BottomK(JsonRecord):
    """The bootstrap at one k: `frequency` (layers x heads), the share of resamples in which each head
    is among the k least important; `agreement`, its mean over the order's own k least important."""

    agreement: float
    frequency: list[list[float]]


@dataclass(kw_only=True)
class Bootstrap(JsonRecord):
    """Resamples of the Step 1 runs with replacement (seeded): {str(k): BottomK} for each k H1 prunes."""

    resamples: int = field(metadata={MINIMUM: 1})
    seed: int
    bottom_k: dict[str, BottomK]


@dataclass(kw_only=True)
class Stability(JsonRecord):
    """How well an order reproduces (summary["orders"][name]["stability"], `importance.stability`):
    for a Step 1 order the runs compared, the agreement between seeds (same dataset) and between
    datasets (same seed), and the bootstrap; for a random or weights order only `note`, saying why
    nothing is measured."""

    note: str | None = optional()
    runs: int | None = optional()
    seeds: Agreement | None = optional()
    datasets: Agreement | None = optional()
    bootstrap: Bootstrap | None = optional()


@dataclass(kw_only=True)
class OrderEntry(JsonRecord):
    """One order of the heads (summary["orders"][name]), most important first."""

    ranked: list[tuple[int, int]]
    matrix: list[list[float]] | None = None  # the mean importance; null for a random order
    # "importance" (Step 1's finetunings), "weights" (the checkpoint's weights, no data) or "random"
    kind: str | None = optional()
    # Step 1 orders: the settings part of their rows' store keys (`importance.step1_key_settings`),
    # by which `headprune verify` selects the rows; absent in older summaries and for random orders.
    settings: dict | None = optional()
    # Step 1 orders: {dataset name: content hash} of the datasets their matrices come from, the
    # dataset part of their rows' store keys: `headprune verify` selects the rows by these, so a
    # file renamed or edited since the run cannot pass for the one used. Absent in older summaries
    # (verify then goes by the names, and says so) and for random orders.
    dataset_hashes: dict[str, str] | None = optional()
    stability: Stability | None = optional()  # absent in summaries before schema 4

    @property
    def is_random(self) -> bool:
        """A random order: said by `kind`, or (a summary without kinds) by having no importance matrix."""
        return self.kind == "random" or self.matrix is None


# ----------------------------------------------------------------------------- Step 2


@dataclass(kw_only=True)
class RankingRow(JsonRecord):
    """One row of RANKING_MODELS (search.rank_models), best first: H1 rows add "k"."""

    model: str
    n_pruned: int
    rank_sum: float
    ranks: dict[str, float]
    scores: dict[str, float] | None = optional()
    k: int | None = optional()


@dataclass(kw_only=True)
class Elimination(JsonRecord):
    """A candidate a race dropped (racing.py): in which of the search's rounds, after how many seeds."""

    round: int = field(metadata={MINIMUM: 1})
    n_pruned: int = field(metadata={MINIMUM: 0})
    pruned_heads: list[tuple[int, int]]
    after_seeds: int = field(metadata={MINIMUM: 1})
    p_value: float
    test: str  # "friedman+conover", "friedman (identical rankings)" or "wilcoxon"
    fidelity: str | None = optional()  # "no-adjust": dropped by the screen at the low fidelity


@dataclass(kw_only=True)
class Decision(JsonRecord):
    """One H2/H3 step a race decided with a paired sequential test (racing.py)."""

    round: int = field(metadata={MINIMUM: 1})
    dataset: str
    n_pruned: int = field(metadata={MINIMUM: 0})
    versus_n_pruned: int | None = None  # the reference's heads pruned; None: the constant 0 (H2's first keep)
    seeds: int = field(metadata={MINIMUM: 1})
    p_value: float | None = None  # None: no test (every difference zero, or the constant 0)
    keep: bool
    mean_difference: float


@dataclass(kw_only=True)
class Racing(JsonRecord):
    """How a search was raced: its settings, seed order, eliminations and decisions."""

    confidence: float
    first_test: int = field(metadata={MINIMUM: 2})
    walk_test: str = WALK_TEST_BEFORE  # racing.WALK_TESTS
    screen: str | None = optional()  # the low fidelity compared rounds were screened at
    seeds: list[int]
    eliminations: list[Elimination]
    decisions: list[Decision]
    chosen_instead: dict | None = None  # the dropped candidate the rank sum put first, if any

    def scored_seeds(self, n_pruned: int) -> list[int]:
        """The seeds this race gave the candidate with `n_pruned` heads pruned at the full fidelity:
        all of them for a survivor, the first `after_seeds` for one it dropped, none for one its
        screen dropped at the low fidelity. The complete model (0) keeps all: the G2 comparison
        scores it on every seed in every run."""
        for dropped in self.eliminations:
            if dropped.n_pruned == n_pruned and n_pruned > 0:
                return [] if dropped.fidelity is not None else list(self.seeds[:dropped.after_seeds])
        return list(self.seeds)


@dataclass(kw_only=True)
class H1Result(JsonRecord):
    """H1 with one order (summary["h1"][order]): mean F1 per dataset and k, the ranking, the chosen k.
    `evaluations`: the seed evaluations the search made; `grid_evaluations`: what the full protocol
    makes on the same path (equal without racing); `racing`: present when it was raced."""

    k_values: list[int]
    departure: str | None = None
    scores: dict[str, dict[str, float]]  # {dataset: {str(k): mean F1}}
    ranking: list[RankingRow]
    chosen_k: int
    pruned_heads: list[tuple[int, int]] | None = optional()
    evaluations: int | None = optional()
    grid_evaluations: int | None = optional()
    low_evaluations: int | None = optional()  # a screened race's low-fidelity evaluations
    racing: Racing | None = optional()
    # The per-seed F1 behind `scores` ({dataset: {str(k): [F1 of each of `seeds`]}}), read from the store
    # after the search: the paired tests of "Which order prunes best". A seed the search did not score
    # is null (a race drops candidates after fewer seeds: `Racing.scored_seeds`), even where the store
    # holds it from another run; a cell with no seed is left out. Absent in summaries before schema 4.
    seeds: list[int] | None = optional()
    seed_scores: dict[str, dict[str, list[float | None]]] | None = optional()

    def seeds_given(self, k: int, seeds: list[int]) -> set[int]:
        """The seeds the search scored its candidate k on: all of `seeds` without racing, else
        those its race gave it (`Racing.scored_seeds`)."""
        return set(seeds if self.racing is None else self.racing.scored_seeds(k))


@dataclass(kw_only=True)
class GreedyModel(JsonRecord):
    """The model an H2/H3 walk kept on one dataset; `score` its F1 there as seen during the walk."""

    pruned_heads: list[tuple[int, int]]
    n_pruned: int
    score: float | None = None


@dataclass(kw_only=True)
class GreedyResult(JsonRecord):
    """H2 or H3 with one order (summary["h2"|"h3"][order]): one model per dataset, cross-scored and ranked."""

    per_dataset: dict[str, GreedyModel]
    cross: dict[str, dict[str, float]]  # {source dataset: {evaluation dataset: mean F1}}
    ranking: list[RankingRow]
    chosen: str
    pruned_heads: list[tuple[int, int]] | None = optional()
    group_size: int | None = optional()
    departure: str | None = None
    complete: dict[str, float] | None = optional()  # H3: the complete model's F1 per dataset
    evaluations: int | None = optional()  # as H1Result's
    grid_evaluations: int | None = optional()
    low_evaluations: int | None = optional()
    racing: Racing | None = optional()


@dataclass(kw_only=True)
class ChosenModel(JsonRecord):
    """A model of the generalization check (summary["chosen"][name]); sizes come with its scores."""

    pruned_heads: list[tuple[int, int]]
    n_pruned: int
    strategy: str | None = None  # None for the complete model
    order: str | None = None
    n_params: int | None = optional()
    size_bytes: int | None = optional()
    params_pct_vs_cm: float | None = optional()
    size_pct_vs_cm: float | None = optional()


# ----------------------------------------------------------------------------- generalization


@dataclass(kw_only=True)
class DatasetScores(JsonRecord):
    """One model on one dataset (generalize.comparison): per-seed F1 and, in the generalization check,
    the seconds one finetuning of this model takes on the run's device (Table 14): each model adjusting
    alone, physically pruned. The reference loop's scores carry those times; where the scores came
    from the batched engine they were timed apart, on the seeds `adjust_seeds`, and the engine's own
    per-model share of a stack's wall time (a throughput, not one finetuning's cost) is
    `engine_adjust_seconds`."""

    scores: list[float]
    mean: float
    std: float
    pct_vs_cm: float | None = None
    adjust_seconds: list[float] | None = optional()
    adjust_mean: float | None = optional()
    adjust_std: float | None = optional()
    adjust_pct_vs_cm: float | None = optional()
    adjust_seeds: list[int] | None = optional()  # None: every seed of `scores`
    engine_adjust_seconds: list[float] | None = optional()
    engine_adjust_mean: float | None = optional()  # of `engine_adjust_seconds` (schema 7)
    engine_adjust_std: float | None = optional()


@dataclass(kw_only=True)
class Significance(JsonRecord):
    """A paired t-test with p < alpha: `better` is significantly better than `worse` on `dataset`."""

    dataset: str
    better: str
    worse: str
    p_value: float


@dataclass(kw_only=True)
class Generalization(JsonRecord):
    """summary["generalization"]: {model: {dataset: DatasetScores}} beside the key "significance"."""

    models: dict[str, dict[str, DatasetScores]]
    significance: list[Significance]

    @classmethod
    def from_json(cls, data: Any, key: str = "") -> Generalization:
        data = as_object(data, key)
        if "significance" not in data:
            raise missing_key(join_key(key, "significance"))
        return cls(
            models={name: read_value(value, dict[str, DatasetScores], join_key(key, name))
                    for name, value in data.items() if name != "significance"},
            significance=read_value(data["significance"], list[Significance], join_key(key, "significance")),
        )

    def to_json(self) -> dict:
        return {**write_value(self.models), "significance": write_value(self.significance)}


@dataclass(kw_only=True)
class MeanScore(JsonRecord):
    """A random-order mean on one dataset: the mean of the models' means, the std of those means
    across the random orders (their spread, not a std over seeds: the per-seed MAM model, with its
    std over seeds and t-tests, is in the generalization table), % vs CM."""

    mean: float
    std: float
    pct_vs_cm: float | None = None


@dataclass(kw_only=True)
class RandomMean(JsonRecord):
    """summary["random_means"]["MAM<strategy>"] (generalize.random_means): {dataset: MeanScore} beside "n_pruned"."""

    datasets: dict[str, MeanScore]
    n_pruned: float | None = None  # mean heads pruned over the random orders' models

    @classmethod
    def from_json(cls, data: Any, key: str = "") -> RandomMean:
        data = as_object(data, key)
        n_pruned = data.get("n_pruned")
        return cls(
            datasets={name: MeanScore.from_json(value, join_key(key, name))
                      for name, value in data.items() if name != "n_pruned"},
            n_pruned=None if n_pruned is None else read_value(n_pruned, float, join_key(key, "n_pruned")),
        )

    def to_json(self) -> dict:
        out: dict = write_value(self.datasets)
        if self.n_pruned is not None:
            out["n_pruned"] = self.n_pruned
        return out


@dataclass(kw_only=True)
class ModelOverview(JsonRecord):
    """A model at a glance (summary["overview"][name], `analysis.overview`): its mean F1 over the
    generalization datasets it shares with CM (`datasets` of them), CM's mean over the same, the
    change vs CM in % (null where CM's is 0), and on how many of them its mean is above CM's."""

    datasets: int = field(metadata={MINIMUM: 1})
    mean: float
    complete_mean: float
    pct_vs_cm: float | None = None
    better_than_cm: int = field(metadata={MINIMUM: 0})


# ----------------------------------------------------------------------------- which order prunes best


def _nan(value: float | None) -> float:
    """A p value or statistic as `curves` writes it: nan where the summary has null (undefined)."""
    return math.nan if value is None else value


@dataclass(kw_only=True)
class OrderCurves(JsonRecord):
    """One order's H1 curves against the others' (`curves.compare_orders`): its mean F1 over k per
    dataset (`area`) and over every (dataset, seed) compared (`mean_area`), and per dataset the safe
    k (the largest k non-inferior to the complete model at the margin; null where none is)."""

    area: dict[str, float]
    safe_k: dict[str, int | None]
    mean_area: float | None = None


@dataclass(kw_only=True)
class OrderPair(JsonRecord):
    """Two orders' mean F1 over k, paired over the (dataset, seed) pairs: the mean difference a - b,
    the two-sided paired t-test and its Holm-adjusted p (null: no test, e.g. fewer than two pairs)."""

    a: str
    b: str
    difference: float | None = None
    n: int = field(metadata={MINIMUM: 0})
    p_value: float | None = None
    p_holm: float | None = None


@dataclass(kw_only=True)
class ChanceRow(JsonRecord):
    """A criterion among the random orders (`curves.against_chance`): its effect (centred mean F1 over
    k), the one-sided prediction t-test (null where the random orders do not spread), Holm over the
    criteria, and its rank among the random orders overall and per dataset (1 = above all)."""

    effect: float
    t: float | None = None
    p_value: float | None = None
    rank: int = field(metadata={MINIMUM: 1})
    rank_by_dataset: dict[str, int]
    p_holm: float | None = None


@dataclass(kw_only=True)
class AgainstChance(JsonRecord):
    """Every non-random order placed in the distribution of the random orders' mean F1 over k."""

    random_orders: list[str]
    datasets: list[str]
    null_effects: dict[str, float]
    null_sd: float
    criteria: dict[str, ChanceRow]
    alpha: float

    def as_curves(self) -> dict:
        """The mapping `curves.against_chance` returns (nan for null), which `curves.chance_sentence` reads."""
        out = self.to_json()
        for name, row in self.criteria.items():
            out["criteria"][name].update(t=_nan(row.t), p_value=_nan(row.p_value), p_holm=_nan(row.p_holm))
        return out


@dataclass(kw_only=True)
class Band(JsonRecord):
    """The complete model's mean and standard deviation over seeds on one dataset."""

    mean: float
    std: float


@dataclass(kw_only=True)
class OrderComparison(JsonRecord):
    """summary["order_comparison"], "Which order prunes best": every order's H1 curves compared
    (`curves.compare_orders`) on the k every order was scored at (`ks`), over the seeds every such
    cell was scored with (`seeds`, per dataset), with `alpha` and the safe k's `margin`; the random
    orders among them and, with two or more, the criteria against them (`against_chance`). `seeded`:
    false for a summary without per-seed H1 scores (before schema 4), whose curves are the means,
    compared but not tested. `complete`: the complete model's band on each dataset (the figures'),
    `bootstrap_agreement`: each Step 1 order's bootstrap agreement, the mean over H1's k."""

    seeded: bool
    orders: dict[str, OrderCurves]
    pairs: list[OrderPair]
    seeds: dict[str, int]
    ks: dict[str, list[int]]
    best: str | None = None
    alpha: float
    margin: float
    random_orders: list[str]
    against_chance: AgainstChance | None = None
    complete: dict[str, Band]
    bootstrap_agreement: dict[str, float]

    def as_curves(self) -> dict:
        """The mapping `curves.compare_orders` returns (nan for null), which `curves.answer` reads."""
        out = {key: value for key, value in self.to_json().items() if key in ("orders", "seeds", "ks", "best",
                                                                            "alpha", "margin")}
        out["pairs"] = [{**pair.to_json(), "p_value": _nan(pair.p_value), "p_holm": _nan(pair.p_holm)}
                        for pair in self.pairs]
        return out


# ----------------------------------------------------------------------------- the whole summary


@dataclass(kw_only=True)
class Summary(JsonRecord):
    """summary.json. Only `model` is required: a report renders whatever parts a run has."""

    schema_version: int = field(default=SCHEMA_VERSION, metadata={MINIMUM: 1})
    headprune_version: str | None = optional()
    date: str | None = optional()  # ISO 8601, UTC
    device: str | None = optional()
    versions: dict | None = optional()  # {library: version}
    config: dict | None = optional()  # config.Config.to_dict(): the validated configuration
    departures: list[str] | None = optional()  # every shortening of the paper's protocol, in words
    model: ModelInfo
    orders: dict[str, OrderEntry] | None = optional()
    h1: dict[str, H1Result] | None = optional()
    h2: dict[str, GreedyResult] | None = optional()
    h3: dict[str, GreedyResult] | None = optional()
    chosen: dict[str, ChosenModel] | None = optional()
    generalization: Generalization | None = optional()
    generalization_seeds: list[int] | None = optional()
    random_means: dict[str, RandomMean] | None = optional()
    # Tables 7-10: CM, the OI models and the random-order means on the Step 2 datasets (G2), over
    # the Step 2 seeds, from the scores Step 2 stored.
    step2_comparison: Generalization | None = optional()
    # The same comparison on seeds no Step 2 selection used (`step2.fresh_seeds`): free of the bias of
    # scoring the chosen models on the seeds that chose them. Absent when off (the paper) or older.
    step2_fresh_comparison: Generalization | None = optional()
    step2_fresh_seeds: list[int] | None = optional()
    # The generalization check at a glance, per model (`analysis.overview`); absent before schema 7.
    overview: dict[str, ModelOverview] | None = optional()
    # "Which order prunes best" (`analysis.order_comparison`): with two or more H1 orders; absent before schema 7.
    order_comparison: OrderComparison | None = optional()
    # Per chosen model, the CPU inference of its encoder (PyTorch eager, `speed.measure`): batch-1
    # latency p50/p95 (ms), batch-32 throughput (texts/s), threads, `p50_speedup` and
    # `throughput_speedup` vs CM. A measurement, apart from the chosen models' (reproducible) facts.
    inference: dict[str, dict] | None = optional()
    elapsed_seconds: float | None = optional()
    # `headprune run --budget`: the budget, the profile it chose and the estimates compared (budget.Choice)
    budget: dict | None = optional()
    path: Path | None = field(default=None, compare=False, metadata={NOT_JSON: True})  # where it was read

    @classmethod
    def from_json(cls, data: Any, key: str = "") -> Summary:
        """The version is checked first: a newer file is refused as such, not by its first unknown key."""
        version = read_value(as_object(data, key).get("schema_version", 1), int, "schema_version", minimum=1)
        if version > SCHEMA_VERSION:
            raise MalformedSummary(
                "schema_version", f"schema_version {version} is newer than this version reads (1 to {SCHEMA_VERSION})"
            )
        summary = super().from_json(data, key)
        summary.schema_version = version
        return summary

    def greedy(self, strategy: str) -> dict[str, GreedyResult]:
        """The H2 or H3 results by order ({} when the run has none)."""
        return {"H2": self.h2, "H3": self.h3}[strategy.upper()] or {}

    def need(self, value: T | None, key: str) -> T:
        """`value`, or the one-line error naming `key` where this use needs a part the summary lacks."""
        if value is None:
            raise malformed(self.path, f"missing or invalid '{key}' (absent)")
        return value

    def config_value(self, *keys: str) -> Any:
        """The configuration's value at `keys` (e.g. "step2", "seeds"), or the one-line error naming it."""
        value: Any = self.config
        key = "config"
        if value is None:
            raise malformed(self.path, f"missing or invalid '{key}' (absent)")
        for name in keys:
            key = f"{key}.{name}"
            if not isinstance(value, dict) or name not in value:
                raise malformed(self.path, f"missing or invalid '{key}' (absent)")
            value = value[name]
        return value


def load_summary(run_dir_or_path: str | os.PathLike) -> Summary:
    """Read `run_dir/summary.json` (or the file itself) into a `Summary`; anything else is one error line."""
    path = Path(run_dir_or_path)
    if path.is_dir():
        path = path / SUMMARY_FILE
    elif path.suffix != ".json":
        raise HeadpruneError(f"{run_dir_or_path}: no such run directory")
    if not path.is_file():
        raise HeadpruneError(f"{path}: not found (a run directory holds {SUMMARY_FILE} once `headprune run` finished)")
    data = parse_user_file(path, json.loads, f"{path}: not a JSON file")
    try:
        summary = Summary.from_json(data)
    except MalformedSummary as err:
        raise malformed(path, str(err)) from None
    summary.path = path
    return summary


def write_summary(path: str | os.PathLike, summary: Summary) -> Path:
    """Write `summary` as summary.json (the pipeline's one writer); returns the path."""
    path = Path(path)
    path.write_text(json.dumps(summary.to_json(), indent=1) + "\n")
    return path


__all__ = [
    "COMPLETE",
    "SCHEMA_VERSION",
    "SUMMARY_FILE",
    "WALK_TEST_BEFORE",
    "Agreement",
    "AgainstChance",
    "Band",
    "ChanceRow",
    "Bootstrap",
    "BottomK",
    "ChosenModel",
    "DatasetScores",
    "Generalization",
    "GreedyModel",
    "GreedyResult",
    "H1Result",
    "MalformedSummary",
    "MeanScore",
    "ModelInfo",
    "ModelOverview",
    "OrderComparison",
    "OrderCurves",
    "OrderEntry",
    "OrderPair",
    "RandomMean",
    "RankingRow",
    "Significance",
    "Stability",
    "Summary",
    "load_summary",
    "malformed",
    "write_summary",
]
