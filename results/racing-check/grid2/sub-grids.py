"""Racing on the sub-grids of both racing-check grids (issue 25, "Also measured"): every H1 search
restricted to each subset of two or more of its datasets is a grid of its own, answered from the
same store at no cost. For each: the grid's choice on that subset (Algorithm 5 on every seed), and
200 races at the default settings (seed orders drawn with seed 0, as `headprune replay`): the
agreement with its two-sided 95% Clopper-Pearson interval and the evaluation fraction.

The sub-grids share datasets and scores, so they are not independent grids: they show how much the
agreement moves with the grid, not a sample of grids.

Run from the repository root with the project's venv:
    OMP_NUM_THREADS=1 python results/racing-check/grid2/sub-grids.py
writes results/racing-check/grid2/sub-grids.json."""

from __future__ import annotations

import functools
import itertools
import json
import time
from pathlib import Path

import numpy as np
from scipy import stats

from headprune.config import parse_seeds
from headprune.racing import RacingSettings
from headprune.search import H1Strategy
from headprune.studies.replay import _full_result, _least, _replay_search, _stored
from headprune.summary import load_summary

HERE = Path(__file__).parent
GRIDS = {"grid2": HERE / "run", "grid1": HERE.parent / "run"}
REPEATS = 200
SEED = 0


def main() -> None:
    start = time.time()
    settings = RacingSettings()
    out: dict = {"what": __doc__.split("\n\n")[0], "repeats": REPEATS, "seed": SEED,
                 "racing": {"confidence": settings.confidence, "first_test": settings.first_test}, "sub_grids": []}
    for grid_name, run_dir in GRIDS.items():
        summary = load_summary(run_dir / "summary.json")
        seeds = parse_seeds(summary.config_value("step2", "seeds"), "step2.seeds")
        scores, evaluate = _stored(run_dir / "store.sqlite", summary.model.fingerprint,
                                   summary.config_value("scoring"))
        for order, entry in (summary.h1 or {}).items():
            ranked = [tuple(h) for h in summary.orders[order].ranked]
            for size in range(2, len(entry.scores) + 1):
                for datasets in itertools.combinations(sorted(entry.scores), size):
                    make = functools.partial(H1Strategy, ranked, list(datasets), k_values=entry.k_values)
                    grid = _full_result(make, seeds, evaluate)[0]
                    result = _replay_search(make, grid, functools.partial(_least, ranked), seeds, settings, REPEATS,
                                            np.random.default_rng(SEED), evaluate, scores)
                    agreed = round(result["agreement"] * REPEATS)
                    ci = stats.binomtest(agreed, REPEATS).proportion_ci(confidence_level=0.95, method="exact")
                    row = {"grid": grid_name, "order": order, "datasets": list(datasets),
                           "grid_choice": result["grid_choice"]["model"],
                           "runner_up_gap": grid["ranking"][1]["rank_sum"] - grid["ranking"][0]["rank_sum"],
                           "agreement": result["agreement"],
                           "agreement_ci95": [round(float(ci.low), 4), round(float(ci.high), 4)],
                           "evaluation_fraction": round(result["evaluation_fraction"], 4),
                           "disagreements": [{k: d[k] for k in ("model", "count", "p_value", "within_noise")}
                                             for d in result["disagreements"]]}
                    out["sub_grids"].append(row)
                    print(grid_name, order, datasets, row["grid_choice"], row["agreement"],
                          row["evaluation_fraction"], flush=True)
    out["seconds"] = round(time.time() - start, 1)
    (HERE / "sub-grids.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
