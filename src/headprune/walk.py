"""How an H2/H3 step is decided before every seed is in (`walk_decision`, by the racing settings'
walk test: the paired t-test, the predictive flip probability, or the skeptical one, the default),
and the pooled seed noise of a walk's decided steps (`SeedNoise`). Pure functions of the paired
scores; `racing.Race` calls them for each step of a raced walk, `headprune replay` on a stored grid.
docs/RACING.md says what each promises and what was measured."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from .frace import paired_p

if TYPE_CHECKING:
    from .racing import RacingSettings


def walk_decision(trial: np.ndarray, base: np.ndarray | None, settings: RacingSettings, n_seeds: int,
                  pooled: tuple[float, int] = (0.0, 0), decisions: int | None = None
                  ) -> tuple[bool, bool, float | None]:
    """One H2/H3 step's sequential decision on its first seeds: (decided, keep, p-value).

    `trial` and `base`: the step's and its reference's F1 on the same seeds, in race order (`base`
    None: the constant 0, always kept). With every one of the `n_seeds` in, the paper's rule
    decides (keep = mean difference >= 0). Before that, by `settings.walk_test`:

    - "t-test": decided once the paired t-test's p < 1 - confidence (keep = the step is better);
      the p-value is the test's, two-sided.
    - "predictive": decided once the probability that the seeds still to come flip the full-seed
      rule's decision is below 1 - confidence (keep = mean difference >= 0 so far), the "p-value"
      being that probability. It is the predictive probability of stochastic curtailment: with n
      of N seeds in, mean paired difference m and standard deviation s, the mean of the N - n to
      come is m + s * sqrt(1/n + 1/(N - n)) * t (t: Student's with the variance's degrees of
      freedom, a flat prior), and the N-seed mean changes sign with probability
      `t.sf(|m| * sqrt(N n / (N - n)) / s)`. The variance is pooled: `pooled` (sum of squares,
      degrees of freedom) holds the walk's steps already decided on the same dataset (`SeedNoise`),
      since the seed noise of a paired difference is the dataset's and the scoring's, not the step's;
      this step's own squares are added to it.
    - "predictive-walk": the same at significance level (1 - confidence) / `decisions`, the most
      decisions the walk makes (Bonferroni; a "-walk" test without `decisions` is a ValueError,
      not a silent level per step). Its promise, the full-seed walk's path with the
      configured confidence, holds only as far as the flat prior does, and on the racing check's
      grid it did not: most steps' true difference is near zero, where the observed mean does not
      persist, and the seed noise grows with the heads pruned, so a pool over a dataset's steps
      understates it for the later ones. Kept for the runs that recorded it.
    - "skeptical" and "skeptical-walk" (the default): decided, as the two above, once the flip
      probability is below 1 - confidence (per step), or that over `decisions` (the walk); but the
      flip probability is the conditional power under no difference of stochastic curtailment
      (Lan, Simon & Halperin 1982): the remaining seeds' differences are taken to have mean zero,
      and the noise is the step's own (no pool): with n of N seeds in, sum S and sum of squares Q
      of the paired differences, `t(n).sf(|S| / sqrt((N - n) Q / n))`. For paired differences that
      are independent and normal with true mean zero, whatever their spread, this is exactly the
      probability that the N-seed mean ends on the other side, given the seeds so far (the scale is
      integrated out with the prior 1/sigma, which for a scale family gives the frequentist
      probability given the differences' direction). A decision taken at any look only when it is
      below alpha is therefore wrong with probability below alpha (the flip probabilities are a
      martingale; optional stopping): among early decisions, the flip rate is at most
      1 - confidence, and over a walk's decisions (Bonferroni) the path is kept with the configured
      confidence. A true difference away from zero makes a flip only less likely (measured by
      simulation: the rate falls as the true difference grows). The price is seeds: with its own
      noise and no belief in the mean so far, |S| / sqrt(Q) is at most sqrt(n), so with 10 seeds at
      confidence 0.95 a step decides after 5 seeds at the earliest, and after 8 in a walk of 48
      decisions.

    A t-test asks whether the step differs at all, which for steps within noise of their reference
    (most of a walk) takes every seed and then is decided by the paper's rule anyway; the flip
    probability asks what the issue's decision is, whether the full-seed rule would decide otherwise."""
    walk_level = settings.walk_test.endswith("-walk")
    if walk_level and (decisions is None or decisions < 1):
        # Silently testing per step would keep the name's promise (the whole walk's confidence) false.
        raise ValueError(f"walk test {settings.walk_test!r} divides its level by the walk's decisions, got "
                         f"decisions={decisions!r}: pass the walk's decision count (Round.decisions), or use "
                         f"{settings.walk_test.removesuffix('-walk')!r} for a level per step")
    if base is None:
        return True, True, None
    difference = trial - base
    mean = float(np.mean(difference))
    if settings.walk_test != "t-test":
        if len(trial) >= n_seeds:
            return True, mean >= 0, None
        alpha = settings.alpha / decisions if walk_level else settings.alpha
        if settings.walk_test.startswith("skeptical"):
            flip = _flip_if_no_difference(difference, n_seeds)
        else:
            flip = _flip_probability(difference, n_seeds, pooled)
        if flip is not None and flip < alpha:
            return True, mean >= 0, flip
        return False, False, flip
    p_value = paired_p(trial, base)
    if len(trial) >= n_seeds:
        return True, mean >= 0, p_value
    if p_value is not None and p_value < settings.alpha:
        return True, mean > 0, p_value
    return False, False, p_value


class SeedNoise:
    """The paired differences of a walk's decided steps, per dataset, as a pooled variance: (sum of
    squared deviations from each step's own mean, degrees of freedom)."""

    def __init__(self) -> None:
        self._pool: dict[str, tuple[float, int]] = {}

    def add(self, dataset: str, difference: np.ndarray) -> None:
        squares, freedom = self._pool.get(dataset, (0.0, 0))
        self._pool[dataset] = (squares + float(np.sum((difference - np.mean(difference)) ** 2)),
                               freedom + len(difference) - 1)

    def pooled(self, dataset: str) -> tuple[float, int]:
        return self._pool.get(dataset, (0.0, 0))


def _flip_probability(difference: np.ndarray, n_seeds: int, pooled: tuple[float, int]) -> float | None:
    """The predictive probability that the remaining seeds flip the sign of the mean paired
    difference over all `n_seeds` (see `walk_decision`); None where no variance is known yet and
    the mean is zero."""
    n = len(difference)
    mean = float(np.mean(difference))
    squares = float(np.sum((difference - mean) ** 2)) + pooled[0]
    freedom = n - 1 + pooled[1]
    if squares <= 0:  # no noise seen at all
        return None if mean == 0 else 0.0
    scale = math.sqrt(squares / freedom)
    return float(stats.t.sf(abs(mean) * math.sqrt(n_seeds * n / (n_seeds - n)) / scale, freedom))


def _flip_if_no_difference(difference: np.ndarray, n_seeds: int) -> float | None:
    """The probability that the remaining seeds flip the sign of the mean paired difference over all
    `n_seeds`, were the step's true difference zero, from the step's own differences (see
    `walk_decision`, "skeptical"); None where every difference so far is zero (nothing to go on)."""
    n = len(difference)
    squares = float(np.sum(difference**2))  # about zero, the mean it assumes: n degrees of freedom
    if squares <= 0:
        return None
    return float(stats.t.sf(abs(float(np.sum(difference))) / math.sqrt((n_seeds - n) * squares / n), n))


__all__ = ["SeedNoise", "walk_decision"]
