"""Tests of the generalization-check tables: summaries, % vs CM, paired t-tests, random-order means."""

from __future__ import annotations

import warnings

import pytest
from scipy.stats import ttest_rel

from headprune.generalize import random_means, significance, statement, summarize, timing_summary

CM = [0.80, 0.81, 0.82, 0.83, 0.84]
A = [0.82, 0.84, 0.83, 0.85, 0.865]  # CM + (0.02, 0.03, 0.01, 0.02, 0.025): clearly better
B = [0.81, 0.80, 0.825, 0.825, 0.84]  # CM + (0.01, -0.01, 0.005, -0.005, 0): no difference


def test_summarize_mean_std_and_pct_by_hand():
    scores = {"CM": {"X": [0.80, 0.82, 0.84]}, "M": {"X": [0.83, 0.84, 0.85]}, "S": {"X": [0.41]}}
    table = summarize(scores)
    assert table["CM"]["X"]["mean"] == pytest.approx(0.82)
    assert table["CM"]["X"]["std"] == pytest.approx(0.02)  # sqrt((0.02^2 + 0 + 0.02^2) / 2)
    assert table["CM"]["X"]["pct_vs_cm"] == pytest.approx(0.0)
    assert table["M"]["X"]["mean"] == pytest.approx(0.84)
    assert table["M"]["X"]["std"] == pytest.approx(0.01)
    assert table["M"]["X"]["pct_vs_cm"] == pytest.approx(100 * 0.02 / 0.82)  # +2.439%
    assert table["M"]["X"]["scores"] == [0.83, 0.84, 0.85]
    assert table["S"]["X"] == {"mean": 0.41, "std": 0.0, "scores": [0.41], "pct_vs_cm": pytest.approx(-50.0)}


def test_summarize_needs_the_reference():
    with pytest.raises(ValueError, match="reference"):
        summarize({"M": {"X": [0.5]}})
    with pytest.raises(ValueError, match="Y"):
        summarize({"CM": {"X": [0.5]}, "M": {"Y": [0.5]}})
    assert (
        summarize({"base": {"X": [2.0]}, "M": {"X": [3.0]}}, reference="base")["M"]["X"]["pct_vs_cm"] == 50.0
    )


def test_timing_summary_uses_adjust_keys():
    table = timing_summary({"CM": {"X": [10.0, 12.0]}, "M": {"X": [5.0, 7.0]}})
    assert table["M"]["X"] == {
        "adjust_seconds": [5.0, 7.0],
        "adjust_mean": 6.0,
        "adjust_std": pytest.approx(2**0.5),
        "adjust_pct_vs_cm": pytest.approx(-100 * 5 / 11),
    }


def test_significance_matches_scipy_paired_t_test():
    scores = {"CM": {"X": CM, "Y": CM}, "A": {"X": A, "Y": CM}, "B": {"X": B}}
    rows = significance(scores)
    expected = []
    for first, second in [("CM", "A"), ("CM", "B"), ("A", "B")]:
        p = ttest_rel(scores[first]["X"], scores[second]["X"]).pvalue
        if p < 0.05:
            better, worse = (
                (first, second) if sum(scores[first]["X"]) > sum(scores[second]["X"]) else (second, first)
            )
            expected.append({"dataset": "X", "better": better, "worse": worse, "p_value": pytest.approx(p)})
    assert rows == expected
    # What the hand-made scores were built to show:
    assert [statement(row) for row in rows] == ["A > CM", "A > B"]
    assert all(row["dataset"] == "X" for row in rows)  # on Y, A equals CM seed by seed: no statement


def test_significance_respects_alpha():
    p = ttest_rel(A, B).pvalue
    scores = {"A": {"X": A}, "B": {"X": B}}
    assert significance(scores, alpha=p / 2) == []
    assert [statement(row) for row in significance(scores, alpha=min(1.0, p * 2))] == ["A > B"]


def test_significance_degenerate_cases_say_nothing_quietly():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert significance({"CM": {"X": CM}, "C": {"X": list(CM)}}) == []  # all differences zero
        assert significance({"CM": {"X": [0.8]}, "M": {"X": [0.9]}}) == []  # one seed


def test_significance_requires_paired_seeds():
    with pytest.raises(ValueError, match="paired"):
        significance({"CM": {"X": CM}, "M": {"X": CM[:3]}})


def test_random_means_over_orders():
    per_order = {
        "MA1H1": {"X": 0.80, "Y": 0.70},
        "MA2H1": {"X": 0.82, "Y": 0.70},
        "MA3H1": {"X": 0.84, "Y": 0.70},
    }
    result = random_means(per_order, {"X": 0.80, "Y": 0.75}, n_pruned={"MA1H1": 10, "MA2H1": 20, "MA3H1": 60})
    assert result["X"] == {
        "mean": pytest.approx(0.82),
        "std": pytest.approx(0.02),
        "pct_vs_cm": pytest.approx(2.5),
    }
    assert result["Y"] == {
        "mean": pytest.approx(0.70),
        "std": pytest.approx(0.0),
        "pct_vs_cm": pytest.approx(-20 / 3),
    }
    assert result["n_pruned"] == 30.0
    assert "n_pruned" not in random_means(per_order, {"X": 0.80, "Y": 0.75})
    with pytest.raises(ValueError, match="reference"):
        random_means(per_order, {"X": 0.80})
