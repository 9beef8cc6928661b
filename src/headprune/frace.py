"""The tests a race decides with, on a table of F1 scores (rows: blocks, one (dataset, seed) each;
columns: candidates): F-Race's (Birattari et al. 2002) Friedman test with Conover's post-hoc
comparisons against the best, as irace does, or the paired Wilcoxon test for two candidates
(`worse_than_best`); and the two-sided paired t-test of a walk's step (`paired_p`). Pure functions of
arrays; `racing.Race` schedules the seeds and calls them."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats


def paired_p(trial: np.ndarray, base: np.ndarray) -> float | None:
    """Two-sided p of the paired t-test; None where it is undefined (every difference zero)."""
    difference = trial - base
    if np.all(difference == 0):
        return None
    if np.all(difference == difference[0]):
        return 0.0  # a constant non-zero difference: as clear as it gets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p_value = float(stats.ttest_rel(trial, base).pvalue)
    return None if math.isnan(p_value) else p_value


def worse_than_best(table: np.ndarray, alpha: float) -> list[tuple[int, float, str]]:
    """Columns (candidates) of `table` (rows: blocks) significantly worse than the best at `alpha`:
    [(column, p-value, test)].

    Three or more candidates: the Friedman test, then Conover's post-hoc comparisons with the best
    (the highest rank sum), unadjusted, as irace does. Where every row ranks the candidates the same
    way, Conover's variance term is zero (scikit-posthocs then returns 0 or nan by rounding): that is
    the strongest evidence there is, so, as irace's formula gives, every candidate whose rank sum is
    below the best's is dropped ("friedman (identical rankings)", p = Friedman's). Two candidates:
    the paired Wilcoxon signed-rank test, two-sided, the worse side named by the test's direction."""
    n_rows, n_cols = table.shape
    if n_cols == 2:
        return _wilcoxon_worse(table, alpha)
    if np.all(table == table[:, :1]):
        return []  # every candidate scores the same in every row
    ranks = stats.rankdata(table, axis=1)  # within each row, highest F1 = highest rank
    sums = ranks.sum(axis=0)
    best = int(np.argmax(sums))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        friedman = float(stats.friedmanchisquare(*table.T).pvalue)
    if not friedman < alpha:
        return []
    residual = n_rows * float(np.sum(ranks**2)) - float(np.sum(sums**2))  # zero: every row ranks alike
    if residual <= 1e-9 * n_rows * float(np.sum(ranks**2)):
        return [(j, friedman, "friedman (identical rankings)") for j in range(n_cols) if sums[j] < sums[best]]
    import scikit_posthocs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posthoc = np.asarray(scikit_posthocs.posthoc_conover_friedman(table), dtype=float)
    return [(j, float(posthoc[best, j]), "friedman+conover") for j in range(n_cols)
            if j != best and sums[j] < sums[best] and posthoc[best, j] < alpha]


def _wilcoxon_worse(table: np.ndarray, alpha: float) -> list[tuple[int, float, str]]:
    """Two candidates: the one the two-sided paired Wilcoxon test finds worse at `alpha`, if any."""
    first, second = table[:, 0], table[:, 1]
    if np.all(first == second):
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        greater = float(stats.wilcoxon(first, second, alternative="greater").pvalue)
        less = float(stats.wilcoxon(first, second, alternative="less").pvalue)
    if 2 * greater < alpha:
        return [(1, 2 * greater, "wilcoxon")]
    if 2 * less < alpha:
        return [(0, 2 * less, "wilcoxon")]
    return []


__all__ = ["paired_p", "worse_than_best"]
