"""Racing (racing.py): F-Race over seeds for compared rounds, sequential tests for H2/H3's steps;
and `headprune replay` on a run that scored the complete grid."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from headprune.errors import HeadpruneError
from headprune.racing import Race, RacingSettings, SeedRequest
from headprune.search import H1Strategy, H2Strategy, H3Strategy, Request, Round, run_strategies
from headprune.walk import SeedNoise, walk_decision

ORDER = [(layer, head) for layer in range(2) for head in range(6)]  # most important first
DATASETS = ["a", "b", "c", "d"]
SEEDS = list(range(1, 11))


def _stable_seed(key: tuple) -> int:
    """A seed from (pruned heads, dataset, seed) that is the same in every process: hash() of a string
    changes with PYTHONHASHSEED, and with it the grid (a test then passes or fails by chance)."""
    pruned, ds, s = key
    text = repr((sorted(pruned), ds, s)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "little")


def _grid(shape, spread: float = 0.01, seed: int = 0):
    """F1 of (pruned, dataset, seed): `shape(k)` plus noise shared by a (dataset, seed) block and a
    small candidate-specific part (so that the ranking within a block is not always the same)."""
    rng = np.random.default_rng(seed)
    block = {(ds, s): rng.normal(0, spread) for ds in DATASETS for s in SEEDS}
    own: dict = {}

    def f1(pruned, ds, s):
        key = (frozenset(pruned), ds, s)
        if key not in own:
            own[key] = float(np.random.default_rng(_stable_seed(key)).normal(0, spread / 4))
        return shape(len(pruned)) + block[(ds, s)] + own[key]

    def seeds(requests):
        return [f1(p, ds, s) for p, ds, s, *_ in requests]

    def means(requests):
        return [float(np.mean([f1(p, ds, s) for s in SEEDS])) for p, ds in requests]

    return seeds, means


def _peaked(k: int) -> float:
    return 0.8 - 0.004 * (k - 4) ** 2


def test_a_clear_race_drops_the_worse_candidates_early_and_keeps_the_grids_choice() -> None:
    by_seed, by_mean = _grid(_peaked)
    grid = run_strategies({"h1": H1Strategy(ORDER, DATASETS)}, by_mean)["h1"]
    raced = run_strategies({"h1": Race(H1Strategy(ORDER, DATASETS), SEEDS)}, by_seed)["h1"]
    assert raced["chosen_k"] == grid["chosen_k"] == 4
    assert raced["grid_evaluations"] == 12 * 4 * 10
    assert raced["evaluations"] < 0.5 * raced["grid_evaluations"]
    eliminations = raced["racing"]["eliminations"]
    assert {e["n_pruned"] for e in eliminations} <= set(range(12)) - {4}
    assert all(e["after_seeds"] >= 3 and e["p_value"] < 0.05 for e in eliminations)
    assert {e["test"] for e in eliminations} <= {"friedman+conover", "wilcoxon"}
    # A dropped candidate is told its mean over the seeds it had (k = 11, far worse, had 3) plus the
    # survivors' offset between every seed and those seeds on the same dataset.
    dropped = next(e for e in eliminations if e["n_pruned"] == 11)
    seeds = SEEDS[: dropped["after_seeds"]]

    def mean(k, seeds):
        pruned = frozenset(ORDER[len(ORDER) - k:]) if k else frozenset()
        return np.mean(by_seed([SeedRequest(pruned, "a", s) for s in seeds]))

    survivors = set(range(12)) - {e["n_pruned"] for e in eliminations}
    offset = np.mean([mean(k, SEEDS) - mean(k, seeds) for k in survivors])
    assert raced["scores"]["a"]["11"] == pytest.approx(mean(11, seeds) + offset)


def test_candidates_that_do_not_differ_race_to_the_end() -> None:
    """Identical scores for every candidate: no test rejects, every seed of every candidate is used,
    and the result is the grid's exactly."""
    by_seed, by_mean = _grid(lambda k: 0.75, spread=0.0)
    grid = run_strategies({"h1": H1Strategy(ORDER, DATASETS)}, by_mean)["h1"]
    raced = run_strategies({"h1": Race(H1Strategy(ORDER, DATASETS), SEEDS)}, by_seed)["h1"]
    assert raced["evaluations"] == raced["grid_evaluations"]
    assert raced["racing"]["eliminations"] == []
    assert raced["chosen_k"] == grid["chosen_k"] and raced["scores"] == grid["scores"]


def test_a_race_whose_first_test_is_the_last_seed_is_the_grid() -> None:
    """first_test = every seed: no early decision anywhere, so each search gives the grid's result."""
    by_seed, by_mean = _grid(_peaked)
    settings = RacingSettings(first_test=len(SEEDS))
    for make in (lambda: H1Strategy(ORDER, DATASETS, k_values=[0, 3, 6, 9]),
                 lambda: H2Strategy(ORDER, DATASETS, group_size=3), lambda: H3Strategy(ORDER, DATASETS, group_size=3)):
        grid = run_strategies({"s": make()}, by_mean)["s"]
        raced = run_strategies({"s": Race(make(), SEEDS, settings)}, by_seed)["s"]
        assert raced["pruned_heads"] == grid["pruned_heads"]
        for key in ("ranking", "scores", "cross", "per_dataset", "complete"):
            if key in grid:
                assert json.dumps(raced[key]) == json.dumps(grid[key]) or _close(raced[key], grid[key]), key
        assert raced["evaluations"] <= raced["grid_evaluations"]


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return abs(a - b) < 1e-12
    return a == b


def test_walk_decisions_are_sequential_and_the_strategy_agrees_with_them() -> None:
    """H3 on a model that loses F1 with every head pruned beyond 4: each step's decision is a paired
    sequential test; the strategy, told the reference's score plus the mean paired difference, keeps
    exactly the steps the race kept."""
    by_seed, by_mean = _grid(lambda k: 0.8 if k <= 4 else 0.8 - 0.01 * (k - 4), spread=0.005)
    raced = run_strategies({"h3": Race(H3Strategy(ORDER, DATASETS, group_size=2), SEEDS)}, by_seed)["h3"]
    decisions = raced["racing"]["decisions"]
    assert decisions and all(d["seeds"] >= 3 for d in decisions)
    assert any(d["seeds"] < len(SEEDS) for d in decisions)  # clear steps stop early
    kept = {ds: max([d["n_pruned"] for d in decisions if d["dataset"] == ds and d["keep"]], default=0)
            for ds in DATASETS}
    assert {ds: m["n_pruned"] for ds, m in raced["per_dataset"].items()} == kept
    for d in decisions:  # a clear decision follows the sign of the mean difference
        if d["p_value"] is not None and d["p_value"] < 0.05:
            assert d["keep"] == (d["mean_difference"] > 0)
    assert raced["evaluations"] < raced["grid_evaluations"]


def test_walk_decision_rules() -> None:
    settings = RacingSettings(confidence=0.95, first_test=3, walk_test="t-test")
    worse = np.array([0.70, 0.71, 0.69])
    same = np.array([0.80, 0.81, 0.79])
    assert walk_decision(worse, same, settings, 10)[:2] == (True, False)  # clearly worse: reject after 3
    assert walk_decision(same, worse, settings, 10)[:2] == (True, True)
    noisy, base = np.array([0.80, 0.70, 0.75]), np.array([0.72, 0.79, 0.74])
    assert walk_decision(noisy, base, settings, 10)[0] is False  # not clear: add a seed
    assert walk_decision(noisy, base, settings, 3)[:2] == (True, bool(np.mean(noisy - base) >= 0))  # the paper's rule
    assert walk_decision(same, same, settings, 10) == (False, False, None)  # identical: no test yet
    assert walk_decision(same, same, settings, 3)[:2] == (True, True)  # ties are kept (">=")
    assert walk_decision(worse, None, settings, 10)[:2] == (True, True)  # against the constant 0


@pytest.mark.parametrize("walk_test", ["predictive-walk", "skeptical-walk"])
def test_a_walk_level_test_without_the_walks_decisions_is_an_error(walk_test: str) -> None:
    """A "-walk" test divides its level by the walk's decisions; without them it must not quietly
    test per step (its promise, the whole walk's path, would be false)."""
    settings = RacingSettings(confidence=0.95, first_test=3, walk_test=walk_test)
    step, base = np.full(4, 0.81), np.full(4, 0.80)
    for decisions in (None, 0):
        with pytest.raises(ValueError, match=f"walk test '{walk_test}' divides its level by the walk's decisions"):
            walk_decision(step, base, settings, 10, decisions=decisions)
    assert walk_decision(step, base, settings, 10, decisions=1)[0] in (True, False)
    per_step = RacingSettings(confidence=0.95, first_test=3, walk_test=walk_test.removesuffix("-walk"))
    assert walk_decision(step, base, per_step, 10)[0] in (True, False)  # a per-step test needs no count


PREDICTIVE = RacingSettings(confidence=0.95, first_test=3, walk_test="predictive")
T_TEST = RacingSettings(confidence=0.95, first_test=3, walk_test="t-test")


def test_the_predictive_walk_decision_is_the_probability_that_the_remaining_seeds_flip_the_rule() -> None:
    from scipy import stats

    # Nine of ten seeds in, a mean difference one seed cannot plausibly undo: the t-test is not
    # sure the step differs at all (p ~ 0.2), but the full-seed rule's decision is already known.
    rng = np.random.default_rng(4)
    difference = 0.01 + 0.02 * rng.standard_normal(9)
    difference += 0.01 - difference.mean()
    base = np.full(9, 0.8)
    t_decided, _, p_value = walk_decision(base + difference, base, T_TEST, 10)
    decided, keep, flip = walk_decision(base + difference, base, PREDICTIVE, 10)
    assert not t_decided and p_value > 0.05
    assert decided and keep
    s = difference.std(ddof=1)
    assert flip == pytest.approx(stats.t.sf(0.01 * np.sqrt(10 * 9 / 1) / s, 8))
    # The same mean on three seeds: seven to come could undo it.
    assert walk_decision(base[:3] + difference[:3], base[:3], PREDICTIVE, 10)[0] is False
    # A pooled variance (the walk's earlier steps on the dataset, many degrees of freedom, small
    # noise) decides what the step's own two degrees of freedom cannot.
    step, ref = np.array([0.80, 0.84, 0.79]), np.array([0.79, 0.79, 0.79])
    assert walk_decision(step, ref, PREDICTIVE, 10)[0] is False
    assert walk_decision(step, ref, PREDICTIVE, 10, pooled=(40 * 0.005 ** 2, 40))[:2] == (True, True)
    # With every seed in, the paper's rule (ties kept); identical so far, no decision.
    assert walk_decision(ref, ref, PREDICTIVE, 3)[:2] == (True, True)
    assert walk_decision(ref, ref, PREDICTIVE, 10)[:2] == (False, False)
    # The walk's confidence: the level divided by the walk's decisions (Bonferroni).
    walk = RacingSettings(confidence=0.95, first_test=3, walk_test="predictive-walk")
    assert 0.05 / 1000 < flip < 0.05
    assert walk_decision(base + difference, base, walk, 10, decisions=1)[:2] == (True, True)
    assert walk_decision(base + difference, base, walk, 10, decisions=1000)[0] is False
    assert walk_decision(base + difference, base, PREDICTIVE, 10, decisions=1000)[:2] == (True, True)  # per step
    # Whatever the paired t-test decides, the predictive test decides too, the same way.
    for _ in range(200):
        n = int(rng.integers(3, 10))
        step, ref = 0.8 + 0.02 * rng.standard_normal(n) + rng.normal(0, 0.02), 0.8 + 0.02 * rng.standard_normal(n)
        t = walk_decision(step, ref, T_TEST, 10)
        if t[0]:
            assert walk_decision(step, ref, PREDICTIVE, 10)[:2] == t[:2]


def test_the_predictive_walk_decision_agrees_with_the_full_seed_rule_at_its_confidence() -> None:
    """Steps whose true differences spread over a few seed-noise widths: decided sequentially
    (noise pooled over the steps before), they agree with the ten-seed rule at least as often as
    the confidence asks, on fewer seeds than the t-test needs."""
    rng = np.random.default_rng(0)
    used = {"t-test": 0, "predictive": 0}
    agree = {"t-test": 0, "predictive": 0}
    steps = [rng.normal(0, 0.02) + 0.015 * rng.standard_normal(10) for _ in range(1500)]
    for walk_test in used:
        settings = RacingSettings(0.95, 3, walk_test)
        noise = SeedNoise()
        for difference in steps:
            n = 3
            while not (decision := walk_decision(0.8 + difference[:n], np.full(n, 0.8), settings, 10,
                                                 noise.pooled("d")))[0]:
                n += 1
            noise.add("d", difference[:n])
            agree[walk_test] += decision[1] == (difference.mean() >= 0)
            used[walk_test] += n
    assert agree["predictive"] / len(steps) >= 0.95 and agree["t-test"] / len(steps) >= 0.95
    assert used["predictive"] < 0.8 * used["t-test"]


def _stable_rng(key: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))


def test_the_skeptical_walk_decision_is_the_flip_probability_were_the_true_difference_zero() -> None:
    from scipy import stats

    skeptical = RacingSettings(confidence=0.95, first_test=3, walk_test="skeptical")
    difference = np.array([0.012, 0.020, 0.008, 0.015, 0.011, 0.017])
    base = np.full(6, 0.8)
    decided, keep, flip = walk_decision(base + difference, base, skeptical, 10)
    # Sum and sum of squares about zero (the mean it assumes), n degrees of freedom.
    expected = stats.t.sf(difference.sum() / np.sqrt(4 * np.sum(difference**2) / 6), 6)
    assert flip == pytest.approx(expected) and decided and keep
    # The step's own noise only: a pool of small noise from other steps changes nothing.
    assert walk_decision(base + difference, base, skeptical, 10, pooled=(40 * 1e-6, 40)) == (decided, keep, flip)
    # |S| / sqrt(Q) is at most sqrt(n): with 10 seeds, even identical differences decide after 5
    # seeds at the earliest (per step at 0.95) and after 8 over a walk of 48 decisions.
    walk = RacingSettings(confidence=0.95, first_test=2, walk_test="skeptical-walk")
    same = np.full(10, 0.01)
    first = {name: next(n for n in range(2, 11) if walk_decision(0.8 + same[:n], np.full(n, 0.8), settings, 10,
                                                                 decisions=48)[0])
             for name, settings in (("step", skeptical), ("walk", walk))}
    assert first == {"step": 5, "walk": 8}
    assert walk_decision(0.8 + same[:4] * [1, -1, 1, -1], np.full(4, 0.8), skeptical, 10)[:2] == (False, False)
    assert walk_decision(base, base, skeptical, 10) == (False, False, None)  # identical: nothing to go on
    assert walk_decision(base + difference, base, skeptical, 6)[:2] == (True, True)  # every seed: the rule


@pytest.mark.parametrize("walk_test, confidence, holds", [
    ("skeptical", 0.95, True), ("skeptical", 0.80, True),
    ("predictive", 0.95, False),  # the flat prior and the pooled noise: the promise it made and broke
])
def test_early_decisions_on_steps_of_no_true_difference_flip_at_most_at_the_level(
        walk_test: str, confidence: float, holds: bool) -> None:
    """Steps whose paired differences have true mean zero and a known spread, ten seeds, decided
    sequentially from the third seed as a race does (noise pooled over the steps before, for the
    tests that pool): among the decisions taken early, the share that the ten-seed rule decides
    the other way is at most 1 - confidence (a one-sided binomial test does not reject at 0.01)."""
    from scipy import stats

    differences = 0.02 * _stable_rng("racing: steps of no true difference").standard_normal((1000, 10))
    settings = RacingSettings(confidence, 3, walk_test)
    noise = SeedNoise()
    early = flips = 0
    for difference in differences:
        n = 3
        while not (decision := walk_decision(0.8 + difference[:n], np.full(n, 0.8), settings, 10,
                                             noise.pooled("d")))[0]:
            n += 1
        noise.add("d", difference[:n])
        if n < 10:
            early += 1
            flips += decision[1] != (difference.mean() >= 0)
    assert early > 300  # the bound is about decisions actually taken early
    p_value = stats.binomtest(flips, early, 1 - confidence, alternative="greater").pvalue
    assert (p_value > 0.01) == holds, (flips, early)


def test_seed_noise_pools_each_datasets_squares_and_degrees_of_freedom() -> None:
    noise = SeedNoise()
    noise.add("a", np.array([0.01, 0.03]))
    noise.add("a", np.array([0.0, 0.0, 0.03]))
    noise.add("b", np.array([0.5, 0.5]))
    squares, freedom = noise.pooled("a")
    assert freedom == 3 and squares == pytest.approx(2 * 0.01 ** 2 + 2 * 0.01 ** 2 + 0.02 ** 2)
    assert noise.pooled("b") == (0.0, 1) and noise.pooled("c") == (0.0, 0)


def test_the_default_race_takes_the_full_seed_walks_path_on_fewer_seeds() -> None:
    """The default walk test (skeptical, the confidence the whole walk's): H2 and H3 raced keep
    exactly the heads the full-seed walks keep, and ask for fewer evaluations."""
    assert RacingSettings().walk_test == "skeptical-walk"
    by_seed, by_mean = _grid(lambda k: 0.8 + 0.003 * k if k <= 6 else 0.818 - 0.012 * (k - 6), spread=0.006)
    for make in (lambda: H2Strategy(ORDER, DATASETS, group_size=2), lambda: H3Strategy(ORDER, DATASETS, group_size=2)):
        full = run_strategies({"s": make()}, by_mean)["s"]
        raced = run_strategies({"s": Race(make(), SEEDS)}, by_seed)["s"]
        assert {ds: m["pruned_heads"] for ds, m in raced["per_dataset"].items()} == \
            {ds: m["pruned_heads"] for ds, m in full["per_dataset"].items()}
        assert raced["evaluations"] < raced["grid_evaluations"]


def test_a_predictive_race_keeps_what_it_decides_and_uses_fewer_seeds() -> None:
    by_seed, _ = _grid(lambda k: 0.8 if k <= 4 else 0.8 - 0.01 * (k - 4), spread=0.005)
    raced = {test: run_strategies({"h3": Race(H3Strategy(ORDER, DATASETS, group_size=2), SEEDS,
                                              RacingSettings(0.95, 3, test))}, by_seed)["h3"]
             for test in ("t-test", "predictive")}
    decisions = raced["predictive"]["racing"]["decisions"]
    assert raced["predictive"]["racing"]["walk_test"] == "predictive"
    kept = {ds: max([d["n_pruned"] for d in decisions if d["dataset"] == ds and d["keep"]], default=0)
            for ds in DATASETS}
    assert {ds: m["n_pruned"] for ds, m in raced["predictive"]["per_dataset"].items()} == kept
    for d in decisions:
        assert d["keep"] == (d["mean_difference"] >= 0)  # decided or not, the sign of the mean so far
    assert raced["predictive"]["evaluations"] < raced["t-test"]["evaluations"]


def test_races_run_together_give_what_each_gives_alone() -> None:
    by_seed, _ = _grid(_peaked)
    makes = {"h1": lambda: H1Strategy(ORDER, DATASETS), "h2": lambda: H2Strategy(ORDER, DATASETS, group_size=3),
             "h3": lambda: H3Strategy(ORDER, DATASETS, group_size=3)}
    calls: list[int] = []

    def counted(requests):
        calls.append(len(requests))
        return by_seed(requests)

    together = run_strategies({k: Race(m(), SEEDS) for k, m in makes.items()}, counted)
    alone = {k: run_strategies({k: Race(m(), SEEDS)}, by_seed)[k] for k, m in makes.items()}
    assert together == alone
    assert max(calls) > 12 * 4  # one call holds several races' seed blocks


def test_a_dropped_candidate_the_rank_sum_puts_first_is_not_chosen() -> None:
    """Borda with partial means can rank a dropped candidate first; the race then chooses the best
    survivor and says so."""
    from headprune.racing import _survivor_choice

    result = {"ranking": [{"model": "k=3", "n_pruned": 3, "k": 3, "rank_sum": 3.0},
                          {"model": "k=0", "n_pruned": 0, "k": 0, "rank_sum": 4.0}],
              "chosen_k": 3, "pruned_heads": [[1, 5], [1, 4], [1, 3]]}
    compared = [frozenset(), frozenset(ORDER[-3:])]
    instead = _survivor_choice(result, {frozenset(ORDER[-3:])}, compared)
    assert instead == {"model": "k=3", "n_pruned": 3}
    assert result["chosen_k"] == 0 and result["pruned_heads"] == []


def test_racing_settings_are_checked() -> None:
    with pytest.raises(HeadpruneError, match="confidence must be between 0 and 1"):
        RacingSettings(confidence=1.0)
    with pytest.raises(HeadpruneError, match="at least 2 seeds"):
        RacingSettings(first_test=1)
    with pytest.raises(HeadpruneError, match="walk test must be one of t-test, predictive, predictive-walk, "
                                             "skeptical, skeptical-walk, got 'b'"):
        RacingSettings(walk_test="b")
    with pytest.raises(HeadpruneError, match="distinct seeds"):
        Race(H1Strategy(ORDER, DATASETS), [1, 1, 2])


def test_strategies_declare_their_rounds() -> None:
    h3 = H3Strategy(ORDER, ["a", "b"], group_size=6)
    first = h3.round()
    assert first.kind == "baseline" and first.requests == [Request(frozenset(), "a"), Request(frozenset(), "b")]
    h3.tell([0.8, 0.7])
    walk = h3.round()
    assert walk.kind == "walk" and walk.versus == [Request(frozenset(), "a"), Request(frozenset(), "b")]
    assert walk.decisions == 2 * 2  # two groups of 6 heads, two datasets
    h2 = H2Strategy(ORDER, ["a"], group_size=3)
    assert h2.round() == Round("walk", [Request(frozenset(ORDER[-3:]), "a")], [None], decisions=4)  # 12 heads / 3
    h2.tell([0.5])
    assert h2.round().versus == [Request(frozenset(ORDER[-3:]), "a")]  # the last kept step
    assert H1Strategy(ORDER, ["a"]).round().kind == "compare"


# ----------------------------------------------------------------------------- on a tiny model, end to end


@pytest.fixture(scope="module")
def grid_and_race(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, air_data_dir: Path):
    """The tiny pipeline with 4 Step 2 seeds: once with racing off (the complete grid), once with
    racing on (first test after 2 seeds, confidence 0.6). A random tiny model's SVM scores every
    candidate the same, so each score is replaced by one that falls with the heads pruned (plus
    noise per (dataset, seed) and per evaluation): the race then has something to decide."""
    import dataclasses
    import hashlib

    from _tiny import tiny_config, tiny_csvs
    from headprune.config import from_dict
    from headprune.pipeline import Pipeline
    from headprune.progress import RunProgress
    from headprune.scoring import run_task
    from headprune.workspace import Workspace

    def noise(*parts) -> float:
        digest = hashlib.sha256(repr(parts).encode()).digest()
        return int.from_bytes(digest[:4], "little") / 2**32 - 0.5

    def structured(context, task):
        real = run_task(context, task)
        f1 = 0.8 - 0.01 * len(task.pruned) + 0.01 * noise(task.dataset, task.seed) + 0.004 * noise(task)
        if context.settings.epochs == 0:  # the low fidelity: lower, and with noise of its own
            f1 = f1 - 0.02 + 0.006 * noise("low", task)
        return dataclasses.replace(real, f1=f1)

    root = tmp_path_factory.mktemp("racing")
    csvs = tiny_csvs(root, air_data_dir)
    data = tiny_config(tiny_bert_dir, csvs)
    data["step2"].update(seeds="1-4")
    data["generalization"].update(seeds="101-102")

    def run(raw: dict, name: str) -> dict:
        config = from_dict(raw, source=f"{name}.toml")
        work = Workspace(config, RunProgress(enabled=False), score=structured)
        return Pipeline(config, root / name, workspace=work).run()

    grid = run(data, "grid")
    low = json.loads(json.dumps(data))
    low["scoring"]["epochs"] = 0
    low["step2"]["strategies"] = ["H1"]
    run(low, "low")
    data["step2"].update(racing=True, racing_first_test=2, racing_confidence=0.6)
    raced = run(data, "raced")
    screened = json.loads(json.dumps(data))
    screened["step2"]["racing_screen"] = "no-adjust"
    screened["step2"]["racing_walk_test"] = "predictive"  # and H2/H3's steps by the predictive test
    run(screened, "screened")
    return root, data, grid, raced


def test_a_raced_run_records_its_race_and_verifies(grid_and_race, monkeypatch, capsys) -> None:
    from _cli import run_cli

    root, _, grid, raced = grid_and_race
    assert any(line.startswith("step2.racing = True") for line in raced["departures"])
    assert not any(line.startswith("step2.racing") for line in grid["departures"])
    for key in ("h1", "h2", "h3"):
        for order, entry in raced[key].items():
            assert entry["racing"]["confidence"] == 0.6 and entry["racing"]["first_test"] == 2
            assert 0 < entry["evaluations"] <= entry["grid_evaluations"]
            plain = grid[key][order]
            assert plain["evaluations"] == plain["grid_evaluations"] and "racing" not in plain
    entries = [e for key in ("h1", "h2", "h3") for e in raced[key].values()]
    assert sum(e["evaluations"] for e in entries) < sum(e["grid_evaluations"] for e in entries)  # it saved some
    h1 = raced["h1"]["OI"]
    assert h1["grid_evaluations"] == grid["h1"]["OI"]["grid_evaluations"] == len(h1["k_values"]) * 2 * 4
    code, out, err = run_cli(monkeypatch, capsys, "verify", root / "raced")
    assert code == 0 and out.startswith("verified: "), err
    # A changed race record is caught: verify re-runs the race from the store.
    tampered = root / "tampered"
    shutil.copytree(root / "raced", tampered, ignore=shutil.ignore_patterns("report"))
    changed = json.loads((tampered / "summary.json").read_text())
    changed["h1"]["OI"]["evaluations"] += 1
    changed["h1"]["OI"]["ranking"][0]["rank_sum"] += 0.5
    changed["h1"]["A1"]["racing"]["seeds"] = [2, 1, 3, 4]
    changed["h2"]["OI"]["racing"]["decisions"][-1]["seeds"] += 1
    ds, k = next((ds, k) for ds, per_k in changed["h1"]["OI"]["seed_scores"].items()
                 for k, scores in per_k.items() if None in scores)
    cell = changed["h1"]["OI"]["seed_scores"][ds][k]
    cell[cell.index(None)] = 0.5  # a seed the race never scored, claimed
    (tampered / "summary.json").write_text(json.dumps(changed))
    code, _, err = run_cli(monkeypatch, capsys, "verify", tampered)
    assert code == 1
    for key in ("h1.OI.evaluations", "h1.OI.ranking", "h1.A1.racing.seeds", "h2.OI.racing.decisions",
                f"h1.OI.seed_scores.{ds}.{k}"):
        assert f"mismatch: {key}:" in err, key


def test_a_race_on_a_store_that_holds_the_grid_reports_only_its_own_seeds(grid_and_race, tmp_path, monkeypatch,
                                                                         capsys) -> None:
    """A raced run whose store already holds the complete grid (a copy of it): each dropped
    candidate's per-seed scores are those its race gave it (`racing.seeds[:after_seeds]`), null for
    the rest although the store has them, so that no order is judged on seeds its race did not
    score; verify checks the same."""
    from _cli import run_cli
    from headprune.config import from_dict
    from headprune.pipeline import Pipeline
    from headprune.progress import RunProgress

    root, data, grid, _ = grid_and_race
    run = tmp_path / "on-grid"
    run.mkdir()
    shutil.copy(root / "grid" / "store.sqlite", run / "store.sqlite")
    config = json.loads(json.dumps(data))
    config["step2"]["strategies"] = ["H1"]
    summary = Pipeline(from_dict(config, source="on-grid.toml"), run, progress=RunProgress(enabled=False)).run()
    masked = 0
    for order, entry in summary["h1"].items():
        for dropped in (e for e in entry["racing"]["eliminations"] if e["n_pruned"] > 0):
            given = entry["racing"]["seeds"][:dropped["after_seeds"]]
            for ds, per_k in entry["seed_scores"].items():
                k = str(dropped["n_pruned"])
                assert None not in grid["h1"][order]["seed_scores"][ds][k]  # the store holds every seed
                assert [s is not None for s in per_k[k]] == [seed in given for seed in entry["seeds"]]
                masked += per_k[k].count(None)
    assert masked > 0
    code, out, err = run_cli(monkeypatch, capsys, "verify", run)
    assert code == 0 and out.startswith("verified: "), err


def test_the_report_shows_the_race(grid_and_race) -> None:
    from headprune.report import write_report

    root, _, _, raced = grid_and_race
    page = write_report(root / "raced").read_text()
    assert 'id="racing"' in page and "table-racing-evaluations" in page
    total = sum(e["evaluations"] for key in ("h1", "h2", "h3") for e in raced[key].values())
    assert f">{raced['h1']['OI']['evaluations']}<" in page and total > 0
    assert 'id="racing"' not in write_report(root / "grid").read_text()
    # Which order prunes best: a dropped candidate's unscored seeds are null, yet every k stays in the
    # curves, compared over the seeds every cell was scored with (the first ones).
    seed_scores = {o: e["seed_scores"] for o, e in raced["h1"].items()}
    partial = [(o, ds, k) for o, per_ds in seed_scores.items() for ds, per_k in per_ds.items()
               for k, scores in per_k.items() if None in scores]
    assert partial and all(seed_scores[o][ds][k][:2] == [x for x in seed_scores[o][ds][k][:2] if x is not None]
                           for o, ds, k in partial)  # every candidate has the first-test seeds
    assert all(set(per_k) == {str(k) for k in raced["h1"][o]["k_values"]}
               for o, per_ds in seed_scores.items() for per_k in per_ds.values())
    assert 'id="orders"' in page and "seeds every one of those cells was scored with" in page


def test_the_dry_run_gives_the_raced_range(grid_and_race, monkeypatch, capsys, tmp_path: Path) -> None:
    from headprune.config import from_dict
    from headprune.pipeline import Pipeline
    from headprune.plan import dry_run_text, raced_least

    _, data, _, _ = grid_and_race
    config = from_dict(data, source="raced.toml")
    text = dry_run_text(Pipeline(config, tmp_path / "dry"), with_estimate=False)
    h1 = next(line for line in text.splitlines() if line.strip().startswith("H1 OI"))
    n = len(range(0, 12, 4)) * 2 * 4  # tiny BERT: 12 heads, k step 4; 2 datasets; 4 seeds
    assert f"{raced_least(n, config)} to {n} evaluations (raced)" in h1 and raced_least(n, config) == n // 2
    assert "racing (step2.racing, confidence 0.6)" in text


def test_replay_on_the_complete_grid(grid_and_race, monkeypatch, capsys) -> None:
    from _cli import run_cli

    root, _, grid, _ = grid_and_race
    code, out, err = run_cli(monkeypatch, capsys, "replay", root / "grid", "--repeats", "12", "--seed", "3")
    assert code == 0, err
    replay = json.loads((root / "grid" / "replay.json").read_text())
    assert replay["repeats"] == 12 and replay["seeds"] == [1, 2, 3, 4]
    assert set(replay["searches"]) == {"h1.OI", "h1.A1", "h2.OI", "h3.OI"}
    for entry in replay["searches"].values():
        assert entry["replayed"] + entry.get("left_the_grid", 0) == 12
        if entry["replayed"]:
            assert 0 <= entry["agreement"] <= 1 and 0 < entry["evaluation_fraction"] <= 1
        for other in entry["disagreements"]:
            assert other["grid_rank"] is None or other["grid_rank"] > 1
            assert other["count"] >= 1 and isinstance(other["within_noise"], bool)
    for key, entry in replay["searches"].items():  # H1's noise ceiling: the grid's rule on 3 of the 4 seeds
        assert key.startswith("h2") or key.startswith("h3") or (
            set(entry["noise_ceiling"]["subsets"]) == {"3"} and 0 <= entry["noise_ceiling"]["bootstrap"] <= 1)
        assert key.startswith("h1") or "noise_ceiling" not in entry
    assert "h1.OI: agreement " in out and "without racing, the grid's rule on 3 random seeds agrees " in out
    steps = replay["searches"]["h3.OI"]["steps"]
    assert steps["decisions"] > 0 and 0 < steps["seed_fraction"] <= 1
    assert 0 <= steps["path_agreement_lower_95"] <= steps["path_agreement"] <= 1
    assert out.splitlines()[-1] == f"replay: {root / 'grid' / 'replay.json'}"
    # With the first test at the last seed nothing is decided early: every replay is the grid.
    code, _, err = run_cli(monkeypatch, capsys, "replay", root / "grid", "--repeats", "5", "--first-test", "4")
    assert code == 0, err
    exact = json.loads((root / "grid" / "replay.json").read_text())
    for key, entry in exact["searches"].items():
        assert entry["agreement"] == 1.0 and entry["disagreements"] == [], key
    assert exact["agreement"] == 1.0 and exact["step_agreement"] == 1.0 and exact["step_seed_fraction"] == 1.0
    for key in ("h2.OI", "h3.OI"):  # every path kept; 5 of 5 bounds the rate below by 0.05 ** (1 / 5)
        steps = exact["searches"][key]["steps"]
        assert steps["path_agreement"] == 1.0 and steps["path_agreement_lower_95"] == pytest.approx(0.05 ** 0.2)
    # The predictive walk test decides the same steps on fewer seeds or as many.
    code, out, err = run_cli(monkeypatch, capsys, "replay", root / "grid", "--repeats", "12", "--seed", "3",
                             "--walk-test", "predictive")
    assert code == 0, err
    predictive = json.loads((root / "grid" / "replay.json").read_text())
    assert predictive["racing"] == {"confidence": 0.95, "first_test": 3, "walk_test": "predictive"}
    assert predictive["step_seed_fraction"] <= replay["step_seed_fraction"]
    code, _, err = run_cli(monkeypatch, capsys, "replay", root / "grid", "--walk-test", "bayes")
    assert code == 2 and err.count("\n") == 1
    assert ("--walk-test must be one of t-test, predictive, predictive-walk, skeptical, skeptical-walk, "
            "got 'bayes'") in err
    # A raced run has no complete grid: one line, exit 2.
    code, _, err = run_cli(monkeypatch, capsys, "replay", root / "raced")
    assert code == 2 and err.count("\n") == 1 and "this run raced" in err


def test_replay_measures_a_low_fidelity_and_screens_with_it(grid_and_race, monkeypatch, capsys) -> None:
    from _cli import run_cli

    root, _, grid, _ = grid_and_race
    code, out, err = run_cli(monkeypatch, capsys, "replay", root / "grid", "--repeats", "8",
                             "--low-fidelity", root / "low", "--screen-cost", "0.25")
    assert code == 0, err
    replay = json.loads((root / "grid" / "replay.json").read_text())
    assert replay["low_fidelity"]["scoring"]["epochs"] == 0 and replay["low_fidelity"]["screen_cost"] == 0.25
    assert set(replay["fidelity"]) == set(replay["screened"]) == {"h1.OI", "h1.A1"}
    for per_dataset in replay["fidelity"].values():
        assert set(per_dataset) == set(grid["h1"]["OI"]["scores"])
        for cell in per_dataset.values():
            assert cell["spearman"] > 0.9  # both fidelities fall with the heads pruned
            assert cell["mean_difference"] == pytest.approx(-0.02, abs=0.005)
    for entry in replay["screened"].values():
        assert 0 <= entry["agreement"] <= 1 and entry["cost_fraction"] > entry["evaluation_fraction"] > 0
        # what a screened race chose instead is described as without the screen: counts add up
        assert entry["agreement"] * 8 + sum(d["count"] for d in entry["disagreements"]) == pytest.approx(8)
        for other in entry["disagreements"]:
            assert other["grid_rank"] > 1
            assert other["within_noise"] == (other["p_value"] is None or other["p_value"] >= 0.05)
    assert "screened at the low fidelity" in out
    code, _, err = run_cli(monkeypatch, capsys, "replay", root / "grid", "--low-fidelity", root / "nowhere")
    assert code == 2 and err.count("\n") == 1 and "--low-fidelity" in err


def test_identical_rankings_in_every_row_drop_every_worse_candidate() -> None:
    """Conover's variance term vanishes when every row ranks the candidates alike (scikit-posthocs
    then gives 0 or nan by rounding): the race drops every candidate below the best, whatever the size."""
    from headprune.frace import worse_than_best

    for n, k in ((4, 4), (8, 4), (10, 4), (6, 3), (40, 12)):
        table = np.tile(np.arange(k, dtype=float) / 100, (n, 1)) + 0.5  # column k-1 best in every row
        dropped = worse_than_best(table, 0.05)
        assert sorted(j for j, _, _ in dropped) == list(range(k - 1)), (n, k)
        assert all(test == "friedman (identical rankings)" for _, _, test in dropped)


def test_two_candidates_drop_the_one_the_wilcoxon_test_finds_worse() -> None:
    """A wins 21 rows by 0.001 and loses 19 by 0.02: fewer row wins for B, but B is better."""
    from headprune.frace import worse_than_best

    a = np.full(40, 0.8)
    b = np.concatenate([np.full(21, 0.799), np.full(19, 0.82)])
    dropped = worse_than_best(np.column_stack([a, b]), 0.05)
    assert [(j, test) for j, _, test in dropped] == [(0, "wilcoxon")] and dropped[0][1] < 0.05
    assert worse_than_best(np.column_stack([b, a]), 0.05)[0][0] == 1


def test_a_screened_race_raises_at_the_low_fidelity_first() -> None:
    """racing_screen: the compared round races at the low fidelity first (SeedRequest.low, routed by
    by_fidelity), then its survivors at the full one; the screen's drops are marked with their fidelity."""
    from headprune.racing import by_fidelity

    full_seeds, _ = _grid(_peaked)
    low_seeds, _ = _grid(lambda k: _peaked(k) - 0.01, seed=5)
    calls = {"full": 0, "low": 0}

    def counting(name, evaluate):
        def inner(requests):
            assert all(len(r) == 3 for r in requests)  # by_fidelity hands each evaluator plain triples
            calls[name] += len(requests)
            return evaluate(requests)
        return inner

    race = Race(H1Strategy(ORDER, DATASETS), SEEDS, screen="no-adjust")
    result = run_strategies({"h1": race}, by_fidelity(counting("full", full_seeds), counting("low", low_seeds)))["h1"]
    assert result["chosen_k"] == 4 and result["racing"]["screen"] == "no-adjust"
    screened = [e for e in result["racing"]["eliminations"] if e.get("fidelity") == "no-adjust"]
    assert screened and calls["low"] == result["low_evaluations"] > 0 and calls["full"] == result["evaluations"]
    unscreened = run_strategies({"h1": Race(H1Strategy(ORDER, DATASETS), SEEDS)}, full_seeds)["h1"]
    assert result["evaluations"] < unscreened["evaluations"]  # the full fidelity only for the screen's survivors
    with pytest.raises(HeadpruneError, match="unknown racing screen"):
        Race(H1Strategy(ORDER, DATASETS), SEEDS, screen="fast")


def test_a_screened_run_records_its_low_fidelity_and_verifies(grid_and_race, monkeypatch, capsys) -> None:
    from _cli import run_cli

    root, _, _, _ = grid_and_race
    summary = json.loads((root / "screened" / "summary.json").read_text())
    h1 = summary["h1"]["OI"]
    assert h1["racing"]["screen"] == "no-adjust" and h1["low_evaluations"] > 0
    assert any("screened first at the low fidelity" in line for line in summary["departures"])
    assert any("predictive probability" in line for line in summary["departures"])
    assert {e["racing"]["walk_test"] for key in ("h1", "h2", "h3") for e in summary[key].values()} == {"predictive"}
    code, out, err = run_cli(monkeypatch, capsys, "verify", root / "screened")
    assert code == 0 and out.startswith("verified: "), err
    # verify re-runs the race with the recorded walk test: recorded otherwise, the decisions differ.
    tampered = root / "screened-tampered"
    shutil.copytree(root / "screened", tampered, ignore=shutil.ignore_patterns("report"))
    changed = json.loads((tampered / "summary.json").read_text())
    for entry in changed["h2"].values():
        entry["racing"]["walk_test"] = "t-test"
    (tampered / "summary.json").write_text(json.dumps(changed))
    code, _, err = run_cli(monkeypatch, capsys, "verify", tampered)
    assert code == 1 and "mismatch: h2.OI." in err


def test_the_noise_ceiling_is_how_often_the_grids_rule_keeps_its_choice_on_fewer_or_resampled_seeds() -> None:
    """Two candidates on one dataset: pruning a head gains 0.1 on seeds 1 and 2 and loses 0.3 on
    seed 3, so on all three seeds the grid keeps the complete model (mean -0.033). Of the 2-seed
    subsets only {1, 2} chooses otherwise (agreement 2/3); resampling 3 seeds keeps the choice
    whenever seed 3 is drawn at least once (1 - (2/3)^3 = 19/27)."""
    from headprune.studies.replay import _noise_ceiling

    gain = {1: 0.1, 2: 0.1, 3: -0.3}

    def evaluate(requests):
        return [0.8 + (gain[seed] if len(pruned) else 0.0) for pruned, _dataset, seed in requests]

    def make():
        return H1Strategy([(0, 0), (0, 1)], ["d"], k_values=[0, 1])

    ceiling = _noise_ceiling(make, frozenset(), [1, 2, 3], RacingSettings(0.95, 2), 3000,
                             np.random.default_rng(0), evaluate)
    assert set(ceiling["subsets"]) == {"2"} and ceiling["repeats"] == 3000
    assert ceiling["subsets"]["2"] == pytest.approx(2 / 3) and ceiling["exhaustive"] == [2]  # all 3 subsets
    assert ceiling["bootstrap"] == pytest.approx(19 / 27, abs=0.03)
    sampled = _noise_ceiling(make, frozenset(), [1, 2, 3], RacingSettings(0.95, 2), 2, np.random.default_rng(0),
                             evaluate)  # fewer repeats than subsets: drawn at random
    assert sampled["exhaustive"] == [] and sampled["subsets"]["2"] in (0.0, 0.5, 1.0)


def test_a_race_that_drops_the_complete_model_verifies(tiny_bert_dir: Path, air_data_dir: Path, tmp_path: Path,
                                                       monkeypatch, capsys) -> None:
    """F1 rising with the heads pruned: every order's race drops k = 0, which the G2 comparison then
    scores on every seed (the complete model). The per-seed H1 scores are read after it, so the
    summary says what the store holds and `headprune verify` agrees."""
    import dataclasses

    from _cli import run_cli
    from _tiny import tiny_config, tiny_csvs
    from headprune.config import from_dict
    from headprune.pipeline import Pipeline
    from headprune.progress import RunProgress
    from headprune.scoring import run_task
    from headprune.workspace import Workspace

    def rising(context, task):
        return dataclasses.replace(run_task(context, task), f1=0.5 + 0.03 * len(task.pruned) + 0.001 * task.seed)

    data = tiny_config(tiny_bert_dir, tiny_csvs(tmp_path, air_data_dir))
    data["step2"].update(seeds="1-4", strategies=["H1"], racing=True, racing_first_test=2, racing_confidence=0.6)
    config = from_dict(data, source="rising.toml")
    work = Workspace(config, RunProgress(enabled=False), score=rising)
    summary = Pipeline(config, tmp_path / "run", workspace=work).run()
    for order, entry in summary["h1"].items():
        assert any(e["n_pruned"] == 0 for e in entry["racing"]["eliminations"]), order
        for per_k in entry["seed_scores"].values():
            assert None not in per_k["0"]  # scored on every seed by the comparison, and said so
    code, out, err = run_cli(monkeypatch, capsys, "verify", tmp_path / "run")
    assert code == 0 and out.startswith("verified: "), err
