"""Tests of Step 2: RANKING_MODELS, H1, H2, H3 on stub evaluators with hand-made scores."""

from __future__ import annotations

import pytest

from headprune.errors import HeadpruneError
from headprune.search import (
    H1Strategy,
    H2Strategy,
    H3Strategy,
    Request,
    h1_search,
    h2_search,
    h3_search,
    k_values_from,
    rank_models,
    run_strategies,
)


def heads(*indices: int) -> frozenset[tuple[int, int]]:
    """Heads of layer 0 by index."""
    return frozenset((0, h) for h in indices)


class Stub:
    """Evaluator answering from a {(pruned heads, dataset): f1} table; records every call."""

    def __init__(self, table: dict[tuple[frozenset, str], float]) -> None:
        self.table = table
        self.calls: list[list[tuple[frozenset, str]]] = []

    def __call__(self, requests: list[tuple[frozenset, str]]) -> list[float]:
        self.calls.append(list(requests))
        for request in requests:
            assert request in self.table, f"unexpected request {request}"
        return [self.table[request] for request in requests]

    def datasets_per_call(self) -> list[list[str]]:
        return [[ds for _, ds in call] for call in self.calls]


ORDER4 = [(0, 0), (0, 1), (0, 2), (0, 3)]  # most important first: the walk starts at (0, 3)


def test_rank_models_reproduces_dissertation_tables_1_to_3():
    scores = {
        "Complete": {"A": 97.5, "B": 97.5},
        "One-head pruned": {"A": 97.5, "B": 98.0},
        "Two-heads pruned": {"A": 98.0, "B": 97.0},
    }
    n_pruned = {"Complete": 0, "One-head pruned": 1, "Two-heads pruned": 2}
    ranking = rank_models(scores, n_pruned)
    assert [(row["model"], row["rank_sum"]) for row in ranking] == [
        ("One-head pruned", 3.5),
        ("Two-heads pruned", 4.0),
        ("Complete", 4.5),
    ]
    ranks = {row["model"]: row["ranks"] for row in ranking}  # Table 2
    assert ranks["Two-heads pruned"] == {"A": 1.0, "B": 3.0}
    assert ranks["Complete"] == {"A": 2.5, "B": 2.0}
    assert ranks["One-head pruned"] == {"A": 2.5, "B": 1.0}
    assert ranking[0]["scores"] == {"A": 97.5, "B": 98.0}
    assert ranking[0]["n_pruned"] == 1


def test_rank_models_equal_sums_prefer_more_heads_pruned_then_name():
    scores = {"b": {"X": 0.9, "Y": 0.1}, "a": {"X": 0.1, "Y": 0.9}, "c": {"X": 0.5, "Y": 0.5}}
    ranking = rank_models(scores, {"a": 3, "b": 3, "c": 7})
    assert [row["rank_sum"] for row in ranking] == [4.0, 4.0, 4.0]
    assert [row["model"] for row in ranking] == ["c", "a", "b"]


def test_rank_models_rejects_models_on_different_datasets():
    with pytest.raises(ValueError, match="expected"):
        rank_models({"a": {"X": 1.0}, "b": {"Y": 1.0}}, {"a": 0, "b": 0})


def test_h1_scores_every_k_in_one_call_and_ranks():
    # Tables 1-3 again, as H1 over a 3-head model (k = 0, 1, 2; k = 3 would prune every head).
    order = [(0, 0), (0, 1), (0, 2)]
    stub = Stub(
        {
            (heads(), "A"): 97.5, (heads(), "B"): 97.5,
            (heads(2), "A"): 97.5, (heads(2), "B"): 98.0,
            (heads(1, 2), "A"): 98.0, (heads(1, 2), "B"): 97.0,
        }
    )  # fmt: skip
    result = h1_search(order, ["A", "B"], stub)
    assert len(stub.calls) == 1 and len(stub.calls[0]) == 6
    assert result.k_values == [0, 1, 2]
    assert result.departure is None
    assert result.scores == {
        "A": {"0": 97.5, "1": 97.5, "2": 98.0},
        "B": {"0": 97.5, "1": 98.0, "2": 97.0},
    }
    assert [(row.k, row.model, row.rank_sum) for row in result.ranking] == [
        (1, "k=1", 3.5),
        (2, "k=2", 4.0),
        (0, "k=0", 4.5),
    ]
    assert result.chosen_k == 1
    assert result.pruned_heads == [(0, 2)]


def test_h1_subset_of_k_and_departure():
    order = [(layer, head) for layer in range(3) for head in range(4)]  # 12 heads
    ks = k_values_from(12, k_step=4)
    assert ks == [0, 4, 8]
    table = {}
    for k, f1 in zip(ks, [0.80, 0.82, 0.81]):
        table[(frozenset(order[12 - k :]) if k else frozenset(), "A")] = f1
    result = h1_search(order, ["A"], Stub(table), k_values=ks)
    assert result.departure == "H1 evaluated k in steps of 4 (paper: every k)"
    assert result.chosen_k == 4
    assert result.pruned_heads == [(2, 0), (2, 1), (2, 2), (2, 3)]  # the 4 least important
    assert k_values_from(12) == list(range(12))
    assert k_values_from(12, k_values=[5, 0, 5]) == [0, 5]


@pytest.mark.parametrize("bad", [[3], [-1], [], [0, 1.5]])
def test_h1_rejects_k_outside_zero_to_n_minus_one(bad):
    stub = Stub({})
    with pytest.raises(HeadpruneError, match="k_values"):
        h1_search([(0, 0), (0, 1), (0, 2)], ["A"], stub, k_values=bad)
    assert stub.calls == []


def test_k_values_from_rejects_bad_options():
    with pytest.raises(HeadpruneError, match="not both"):
        k_values_from(12, k_step=2, k_values=[0])
    with pytest.raises(HeadpruneError, match="k_step"):
        k_values_from(12, k_step=0)
    with pytest.raises(HeadpruneError, match="0 <= k < 12"):
        k_values_from(12, k_values=[12])


def h2_table() -> dict:
    return {
        # X: tie keeps (3,2), drop (1), keep (0) -> {3, 2, 0}
        (heads(3), "X"): 0.70,
        (heads(3, 2), "X"): 0.70,
        (heads(3, 2, 1), "X"): 0.69,
        (heads(3, 2, 0), "X"): 0.75,
        # Y: keeps 3, 2, 1; adding 0 would prune every head, so it is never requested
        (heads(3), "Y"): 0.60,
        (heads(3, 2), "Y"): 0.61,
        (heads(3, 2, 1), "Y"): 0.62,
        # cross (Y's model on X is the 0.69 above)
        (heads(3, 2, 0), "Y"): 0.63,
    }


def test_h2_keeps_ties_skips_pruning_all_and_walks_in_lockstep():
    stub = Stub(h2_table())
    result = h2_search(ORDER4, ["X", "Y"], stub)
    walk, cross_call = stub.datasets_per_call()[:-1], stub.calls[-1]
    assert walk == [["X", "Y"], ["X", "Y"], ["X", "Y"], ["X"]]  # Y stops: the last step would prune all
    assert sorted(cross_call, key=repr) == sorted(
        [(heads(3, 2, 0), "X"), (heads(3, 2, 0), "Y"), (heads(3, 2, 1), "X"), (heads(3, 2, 1), "Y")], key=repr
    )
    assert result.to_json()["per_dataset"] == {
        "X": {"pruned_heads": [[0, 0], [0, 2], [0, 3]], "n_pruned": 3, "score": 0.75},
        "Y": {"pruned_heads": [[0, 1], [0, 2], [0, 3]], "n_pruned": 3, "score": 0.62},
    }
    assert result.cross == {"X": {"X": 0.75, "Y": 0.63}, "Y": {"X": 0.69, "Y": 0.62}}
    assert [(row.model, row.rank_sum) for row in result.ranking] == [("X", 2.0), ("Y", 4.0)]
    assert result.chosen == "X"
    assert result.pruned_heads == [(0, 0), (0, 2), (0, 3)]
    assert result.departure is None


def test_h2_first_head_is_always_kept():
    table = {(heads(3), "X"): 0.0, (heads(3, 2), "X"): 0.0, (heads(3, 2, 1), "X"): 0.0}
    result = h2_search(ORDER4, ["X"], Stub(table))
    # Every score is 0.0 >= 0.0: all kept up to the never-prune-all limit.
    assert result.per_dataset["X"].n_pruned == 3


def h3_table() -> dict:
    return {
        (heads(), "X"): 0.70,
        (heads(), "Y"): 0.60,
        # X: 0.72 < best 0.75 but >= complete 0.70 -> kept (H2 would drop it); tie with complete kept
        (heads(3), "X"): 0.75,
        (heads(3, 2), "X"): 0.72,
        (heads(3, 2, 1), "X"): 0.69,
        (heads(3, 2, 0), "X"): 0.70,
        # Y: only the last head keeps the complete model's score
        (heads(3), "Y"): 0.59,
        (heads(2), "Y"): 0.58,
        (heads(1), "Y"): 0.58,
        (heads(0), "Y"): 0.60,
        # cross: rank sums tie (3 vs 3), X's model prunes more heads and wins
        (heads(3, 2, 0), "Y"): 0.61,
        (heads(0), "X"): 0.71,
    }


def test_h3_compares_with_complete_model_and_breaks_ties_by_heads_pruned():
    stub = Stub(h3_table())
    result = h3_search(ORDER4, ["X", "Y"], stub)
    assert stub.calls[0] == [(frozenset(), "X"), (frozenset(), "Y")]
    assert stub.datasets_per_call()[1:-1] == [["X", "Y"]] * 4
    assert len(stub.calls) == 6
    assert result.complete == {"X": 0.70, "Y": 0.60}
    assert result.per_dataset["X"].to_json() == {
        "pruned_heads": [[0, 0], [0, 2], [0, 3]],
        "n_pruned": 3,
        "score": 0.70,
    }
    assert result.per_dataset["Y"].to_json() == {"pruned_heads": [[0, 0]], "n_pruned": 1, "score": 0.60}
    assert [row.rank_sum for row in result.ranking] == [3.0, 3.0]
    assert result.chosen == "X"
    assert result.pruned_heads == [(0, 0), (0, 2), (0, 3)]


def test_h3_keeps_nothing_when_every_step_loses():
    table = {(heads(), "X"): 0.9, (heads(3), "X"): 0.8, (heads(2), "X"): 0.8, (heads(1), "X"): 0.8}
    table[(heads(0), "X")] = 0.8
    result = h3_search(ORDER4, ["X"], Stub(table))
    assert result.per_dataset["X"].to_json() == {"pruned_heads": [], "n_pruned": 0, "score": 0.9}
    assert result.pruned_heads == []


def test_group_size_tries_groups_and_never_prunes_all():
    order = [(0, h) for h in range(5)]  # groups from the end: {4, 3}, {2, 1}, {0}
    table = {
        (heads(4, 3), "X"): 0.70,
        (heads(4, 3, 2, 1), "X"): 0.71,  # kept; the group {0} would then prune all: skipped for X
        (heads(4, 3), "Y"): 0.50,
        (heads(4, 3, 2, 1), "Y"): 0.40,  # dropped
        (heads(4, 3, 0), "Y"): 0.55,  # kept
        (heads(4, 3, 0), "X"): 0.60,  # cross (X's model on Y is the 0.40 above)
    }
    stub = Stub(table)
    result = h2_search(order, ["X", "Y"], stub, group_size=2)
    assert stub.datasets_per_call()[:-1] == [["X", "Y"], ["X", "Y"], ["Y"]]
    assert result.per_dataset["X"].pruned_heads == [(0, 1), (0, 2), (0, 3), (0, 4)]
    assert result.per_dataset["Y"].pruned_heads == [(0, 0), (0, 3), (0, 4)]
    assert result.group_size == 2
    assert result.departure == "H2 tried heads in groups of 2 (paper: one head at a time)"
    assert result.chosen == "X"  # X: 0.71 vs 0.60 on X; 0.40 vs 0.55 on Y -> tie 3/3, X prunes more


def test_single_head_model_is_never_pruned():
    stub = Stub({(frozenset(), "X"): 0.5})
    result = h2_search([(0, 0)], ["X"], stub)
    assert stub.calls == [[(frozenset(), "X")]]  # only the cross-scoring
    assert result.per_dataset["X"].n_pruned == 0


def test_bad_group_size_and_bad_evaluator_are_reported():
    with pytest.raises(HeadpruneError, match="group_size"):
        h2_search(ORDER4, ["X"], Stub({}), group_size=0)
    with pytest.raises(ValueError, match="returned 0 scores for 1"):
        h2_search(ORDER4, ["X"], lambda requests: [])
    with pytest.raises(HeadpruneError, match="more than once"):
        h3_search(ORDER4, ["X", "X"], Stub({}))


# ----------------------------------------------------------------------------- strategies (ask/tell)


class Scores(Stub):
    """Any request: a deterministic made-up score."""

    def __init__(self):
        super().__init__({})

    def __call__(self, requests):
        self.calls.append(list(requests))
        return [0.5 + (sum(7 * (h + 1) for _, h in pruned) + 3 * (ds == "Y")) % 10 / 50 for pruned, ds in requests]


STRATEGIES = {
    "H1": (lambda: H1Strategy(ORDER4, ["X", "Y"]), lambda ev: h1_search(ORDER4, ["X", "Y"], ev)),
    "H2": (lambda: H2Strategy(ORDER4, ["X", "Y"]), lambda ev: h2_search(ORDER4, ["X", "Y"], ev)),
    "H3": (lambda: H3Strategy(ORDER4, ["X", "Y"]), lambda ev: h3_search(ORDER4, ["X", "Y"], ev)),
    "H2 groups": (
        lambda: H2Strategy([(0, h) for h in range(5)], ["X", "Y"], group_size=2),
        lambda ev: h2_search([(0, h) for h in range(5)], ["X", "Y"], ev, group_size=2),
    ),
}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_a_strategy_driven_by_hand_gives_the_search_result(name):
    make, search = STRATEGIES[name]
    stub = Scores()
    expected = search(stub)
    strategy, rounds = make(), []
    while not strategy.done:
        requests = strategy.ask()
        assert strategy.ask() == requests  # asking again before telling repeats the round
        rounds.append(requests)
        strategy.tell(Scores()(requests))
    assert rounds == stub.calls
    assert all(isinstance(r, Request) for requests in rounds for r in requests)
    assert strategy.result() == expected.to_json()  # the one-call search types the same entry
    assert list(strategy.result()) == list(expected.to_json())


def test_the_cross_scoring_round_asks_identical_requests_once():
    strategy = H3Strategy(ORDER4, ["X", "Y"])
    rounds = []
    while not strategy.done:
        rounds.append(strategy.ask())
        strategy.tell([1.0 if not pruned else 0.5 for pruned, _ in rounds[-1]])  # every step loses
    assert rounds[-1] == [(frozenset(), "X"), (frozenset(), "Y")]  # both models are the complete one
    assert strategy.result()["cross"] == {"X": {"X": 1.0, "Y": 1.0}, "Y": {"X": 1.0, "Y": 1.0}}


def test_ask_after_done_is_empty_and_result_before_done_raises():
    strategy = H1Strategy(ORDER4, ["X"])
    with pytest.raises(RuntimeError, match="not done"):
        strategy.result()
    strategy.tell(Scores()(strategy.ask()))
    assert strategy.done
    assert strategy.ask() == []
    with pytest.raises(RuntimeError, match="is done"):
        strategy.tell([])


def test_tell_with_the_wrong_number_of_scores_raises_and_keeps_the_round():
    strategy = H3Strategy(ORDER4, ["X", "Y"])
    requests = strategy.ask()
    with pytest.raises(ValueError, match="told 1 scores for 2 requests"):
        strategy.tell([0.5])
    assert strategy.ask() == requests
    assert not strategy.done


def test_strategies_validate_their_arguments_when_made():
    with pytest.raises(HeadpruneError, match="k_values"):
        H1Strategy(ORDER4, ["X"], k_values=[4])
    with pytest.raises(HeadpruneError, match="group_size"):
        H2Strategy(ORDER4, ["X"], group_size=0)
    with pytest.raises(HeadpruneError, match="more than once"):
        H3Strategy(ORDER4, ["X", "X"])
    with pytest.raises(HeadpruneError, match="order is empty"):
        H3Strategy([], ["X"])


@pytest.mark.parametrize("names", [["H1", "H2", "H3"], ["H3", "H2 groups", "H1", "H2"]])
def test_run_strategies_merges_rounds_and_gives_the_sequential_results(names):
    """Several strategies together: every round is one evaluator call holding each unfinished
    strategy's requests in the order given, and each strategy returns what its search returns alone."""
    single = {}
    alone = {}
    for name in names:
        stub = Scores()
        alone[name] = STRATEGIES[name][1](stub).to_json()
        single[name] = stub.calls
    merged = Scores()
    together = run_strategies({name: STRATEGIES[name][0]() for name in names}, merged)
    assert together == alone
    assert list(together) == names
    assert len(merged.calls) == max(len(c) for c in single.values())  # strategies advance in lockstep
    for i, call in enumerate(merged.calls):
        assert call == [request for name in names if i < len(single[name]) for request in single[name][i]]
    if names == ["H1", "H2", "H3"]:
        assert merged.calls[0] == single["H1"][0] + single["H2"][0] + single["H3"][0]
        assert merged.calls[1] == single["H2"][1] + single["H3"][1]  # H1 is done after one round
    assert sum(len(c) for c in merged.calls) == sum(len(r) for c in single.values() for r in c)


def test_run_strategies_checks_the_evaluator_answers():
    with pytest.raises(ValueError, match="returned 3 scores for 4 requests"):
        run_strategies({"a": H2Strategy(ORDER4, ["X", "Y"]), "b": H2Strategy(ORDER4, ["X", "Y"])},
                       lambda requests: [0.5] * 3)
    nan_message = r"non-finite score for 1 request\(s\), e.g. \(frozenset\(\{\(0, 3\)\}\), 'Y'\)"
    with pytest.raises(ValueError, match=nan_message):
        run_strategies({"a": H2Strategy(ORDER4, ["X", "Y"])}, lambda requests: [0.5, float("nan")])


def test_run_strategies_raises_an_evaluator_error():
    def failing(requests):
        raise HeadpruneError("the store is full")

    strategies = {n: H2Strategy(ORDER4, ["X", "Y"]) for n in ("a", "b", "c")}
    with pytest.raises(HeadpruneError, match="store is full"):
        run_strategies(strategies, failing)


def test_run_strategies_raises_a_strategy_error():
    stub = Stub(h2_table())

    class Broken:
        done = False

        def ask(self):
            return [Request(heads(3), "X")]

        def tell(self, scores):
            raise ValueError("bad search")

        def result(self):
            raise AssertionError("never reached")

    with pytest.raises(ValueError, match="bad search"):
        run_strategies({"ok": H2Strategy(ORDER4, ["X", "Y"]), "broken": Broken()}, stub)
    assert len(stub.calls) == 1
