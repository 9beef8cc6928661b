"""What would let H2/H3's step decisions use fewer seeds (issue 18), measured on the complete grid of
results/racing-check/run, on the path the full run took, 200 seed permutations (seed 0):

1. the sequential paired t-test of `walk.walk_decision` with an equivalence stop added (also stop
   once the paired one-sided confidence bounds of the difference both lie within +-margin F1,
   deciding by the sign of the mean so far; an exploration, not built);
2. the paper's rule on b random seeds against all 10: the steps' own noise ceiling.

Run from the repository root with the project's venv: python results/racing-check/step-ceiling.py"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from headprune.racing import RacingSettings
from headprune.studies.replay import _full_result, _searches, _stored
from headprune.summary import load_summary
from headprune.walk import walk_decision

RUN = Path(__file__).parent / "run"
SEEDS = list(range(1, 11))
SETTINGS = RacingSettings(0.95, 3, "t-test")  # what this script measures (the default walk test has changed since)
REPEATS = 200


def decide(trial: np.ndarray, base: np.ndarray, margin: float) -> tuple[bool, int]:
    """(keep, seeds used) of one step: the sequential t-test, plus the equivalence stop."""
    n = SETTINGS.first_test
    while True:
        done, keep, _ = walk_decision(trial[:n], base[:n], SETTINGS, len(SEEDS))
        if done:
            return keep, n
        difference = trial[:n] - base[:n]
        half = stats.t.ppf(SETTINGS.confidence, n - 1) * difference.std(ddof=1) / np.sqrt(n)
        if margin > 0 and half > 0 and -margin < difference.mean() - half and difference.mean() + half < margin:
            return bool(difference.mean() >= 0), n
        n += 1


def main() -> None:
    summary = load_summary(RUN / "summary.json")
    _, evaluate = _stored(RUN / "store.sqlite", summary.model.fingerprint, summary.config_value("scoring"))
    rng = np.random.default_rng(0)

    def f1(request, seeds) -> np.ndarray:
        return np.array(evaluate([(request.pruned, request.dataset, s) for s in seeds]))

    for key, make, _, _ in _searches(summary, summary.config_value("step2")):
        if key.startswith("h1."):
            continue
        _, _, path = _full_result(make, SEEDS, evaluate)
        steps = [(step, versus) for step, versus, _ in path if versus is not None]
        full = [f1(step, SEEDS).mean() - f1(versus, SEEDS).mean() >= 0 for step, versus in steps]
        for margin in (0.0, 0.005, 0.01, 0.02):
            agree = used = 0
            for _ in range(REPEATS):
                order = [int(s) for s in rng.permutation(SEEDS)]
                for (step, versus), rule in zip(steps, full):
                    keep, n = decide(f1(step, order), f1(versus, order), margin)
                    agree += keep == rule
                    used += n
            total = REPEATS * len(steps)
            print(f"{key} sequential, margin {margin}: agreement {agree / total:.3f}, "
                  f"seeds {used / total / len(SEEDS):.3f}")
        for b in (3, 5, 7):
            agree = 0
            for _ in range(REPEATS):
                pick = [int(s) for s in rng.choice(SEEDS, size=b, replace=False)]
                agree += sum(bool((f1(step, pick) - f1(versus, pick)).mean() >= 0) == rule
                             for (step, versus), rule in zip(steps, full))
            print(f"{key} the paper's rule on {b} seeds: agreement {agree / (REPEATS * len(steps)):.3f}")


if __name__ == "__main__":
    main()
