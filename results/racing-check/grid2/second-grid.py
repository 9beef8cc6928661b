"""Racing on a second grid (issue 25, "Also measured"): how often H1's race chooses the grid's model,
and at what share of the grid's evaluations, on results/racing-check/grid2/run (a grid the racing
defaults were not tuned on) beside results/racing-check/run (the grid they were tuned on).

For each grid's H1 searches, answered from its store as `headprune replay` does
(`replay._replay_search`: the same race, the same count of evaluations, the same "within noise"):

1. `replays`: 200 seed orders drawn with seed 0 (as `headprune replay --repeats 200 --seed 0`, so
   the default row repeats its replay.json), at confidence 0.95, 0.90, 0.80 and first test 3 and 2
   (the settings of results/racing-check/h1/settings-sweep.json, now with the corrected final
   ranking), each with the two-sided 95% Clopper-Pearson interval of the agreement
   (`scipy.stats.binomtest(...).proportion_ci(method="exact")`). The 200 orders permute the same
   seeds, so the interval is over seed orders for these scores, not over new seeds or new grids.
2. `all_orders` (grid2 only: 6 seeds have 720 orders): the race on every seed order once, so the
   agreement over orders is exact for this grid, with no sampling error.

Run from the repository root with the project's venv:
    OMP_NUM_THREADS=1 python results/racing-check/grid2/second-grid.py
writes results/racing-check/grid2/second-grid.json."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
from scipy import stats

from headprune.config import parse_seeds
from headprune.racing import RacingSettings
from headprune.studies.replay import _replay_search, _searches, _stored
from headprune.summary import load_summary

HERE = Path(__file__).parent
GRIDS = {"grid2": HERE / "run", "grid1": HERE.parent / "run"}
REPEATS = 200
SEED = 0
SETTINGS = ((0.95, 3), (0.95, 2), (0.90, 3), (0.90, 2), (0.80, 3), (0.80, 2))  # the default first


class _EveryOrder:
    """Stands in for the replay's random generator: each call gives the next seed order, all in turn."""

    def __init__(self, seeds: list[int]) -> None:
        self._orders = itertools.permutations(seeds)

    def permutation(self, seeds: list[int]) -> list[int]:
        return list(next(self._orders))


def interval(successes: int, trials: int) -> list[float]:
    ci = stats.binomtest(successes, trials).proportion_ci(confidence_level=0.95, method="exact")
    return [round(float(ci.low), 4), round(float(ci.high), 4)]


def entry(result: dict, repeats: int) -> dict:
    agree = round(result["agreement"] * repeats)
    return {"agreement": result["agreement"], "agreed": agree, "of": repeats,
            "agreement_ci95": interval(agree, repeats),
            "evaluation_fraction": round(result["evaluation_fraction"], 4),
            "grid_evaluations": result["grid_evaluations"], "grid_choice": result["grid_choice"],
            "disagreements": result["disagreements"]}


def measure(run_dir: Path, exhaustive: bool) -> dict:
    summary = load_summary(run_dir / "summary.json")
    step2 = summary.config_value("step2")
    seeds = parse_seeds(step2["seeds"], "step2.seeds")
    scores, evaluate = _stored(run_dir / "store.sqlite", summary.model.fingerprint, summary.config_value("scoring"))
    searches = [s for s in _searches(summary, step2) if s[0].startswith("h1.")]
    out: dict = {"run_dir": str(run_dir), "seeds": seeds, "replays": [], "all_orders": None}
    for confidence, first_test in SETTINGS:
        settings = RacingSettings(confidence=confidence, first_test=first_test)
        rng = np.random.default_rng(SEED)  # as `headprune replay --seed 0`: the same orders for every setting
        row: dict = {"confidence": confidence, "first_test": first_test}
        for key, make, grid, row_set in searches:
            row[key] = entry(_replay_search(make, grid, row_set, seeds, settings, REPEATS, rng, evaluate, scores),
                             REPEATS)
        out["replays"].append(row)
        print(run_dir, confidence, first_test, {k: (v["agreement"], v["evaluation_fraction"])
                                                for k, v in row.items() if k.startswith("h1.")}, flush=True)
    if exhaustive:
        settings = RacingSettings()
        n_orders = int(np.prod(range(1, len(seeds) + 1)))
        out["all_orders"] = {"confidence": settings.confidence, "first_test": settings.first_test}
        for key, make, grid, row_set in searches:
            out["all_orders"][key] = entry(_replay_search(make, grid, row_set, seeds, settings, n_orders,
                                                          _EveryOrder(seeds), evaluate, scores), n_orders)
    return out


def main() -> None:
    start = time.time()
    out = {"what": __doc__.split("\n\n")[0], "repeats": REPEATS, "seed": SEED,
           "grids": {name: measure(path, exhaustive=name == "grid2") for name, path in GRIDS.items()}}
    out["seconds"] = round(time.time() - start, 1)
    (HERE / "second-grid.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
