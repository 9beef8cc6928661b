"""Tests of the generalization-check tables: summaries, % vs CM, paired t-tests, random-order means."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import ttest_rel

from headprune.generalize import (
    comparison,
    per_seed_means,
    random_means,
    random_order_members,
    significance,
    statement,
    summarize,
    timing_summary,
)

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
    assert [statement(row) for row in rows] == ["{A} > {CM}", "{A} > {B}"]
    assert all(row["dataset"] == "X" for row in rows)  # on Y, A equals CM seed by seed: no statement


def test_significance_respects_alpha():
    p = ttest_rel(A, B).pvalue
    scores = {"A": {"X": A}, "B": {"X": B}}
    assert significance(scores, alpha=p / 2) == []
    assert [statement(row) for row in significance(scores, alpha=min(1.0, p * 2))] == ["{A} > {B}"]


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


def test_statement_is_written_as_in_method_md():
    assert statement({"better": "MOIH1", "worse": "CM"}) == "{MOIH1} > {CM}"


def test_random_order_means_are_per_seed_means_of_their_members():
    chosen = {"CM": (None, None), "MOIH1": ("OI", "H1"), "MA1H1": ("A1", "H1"), "MA2H1": ("A2", "H1"),
              "MOIH2": ("OI", "H2")}
    members = random_order_members(chosen, {"A1", "A2"})
    assert members == {"MAMH1": ["MA1H1", "MA2H1"]}  # no random-order model for H2: no MAMH2
    values = {"MA1H1": {"d": [0.5, 0.7, 0.9]}, "MA2H1": {"d": [0.7, 0.7, 0.5]}}
    means = per_seed_means(values, members)
    assert means == {"MAMH1": {"d": pytest.approx([0.6, 0.7, 0.7])}}
    # Its std is over seeds (of the per-seed means), not across the orders' means.
    table = comparison({"CM": {"d": [0.6, 0.6, 0.6]}, **means})
    assert table["MAMH1"]["d"]["std"] == pytest.approx(np.std([0.6, 0.7, 0.7], ddof=1))
    with pytest.raises(ValueError, match="different numbers of seeds"):
        per_seed_means({"MA1H1": {"d": [0.5]}, "MA2H1": {"d": [0.5, 0.6]}}, members)


def test_comparison_holds_every_model_and_the_t_tests():
    scores = {"CM": {"d": [0.60, 0.61, 0.62, 0.60]}, "M": {"d": [0.70, 0.72, 0.71, 0.73]}}
    table = comparison(scores, {"CM": {"d": [2.0] * 4}, "M": {"d": [1.0] * 4}})
    assert table["M"]["d"]["pct_vs_cm"] == pytest.approx(100 * (0.715 / 0.6075 - 1))
    assert table["M"]["d"]["adjust_pct_vs_cm"] == pytest.approx(-50.0)
    assert [(r["better"], r["worse"]) for r in table["significance"]] == [("M", "CM")]
