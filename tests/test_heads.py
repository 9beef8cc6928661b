"""`HeadSet`: the one value type of a pruned set, and every spelling of it the project writes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from headprune.errors import HeadpruneError
from headprune.heads import HeadSet


def test_every_input_spelling_gives_the_same_set() -> None:
    want = HeadSet([(0, 3), (1, 0), (1, 2)])
    assert HeadSet({1: [2, 0], 0: [3]}) == want
    assert HeadSet({"1": [2, 0, 2], "0": [3], "5": []}) == want  # a config's string layers; an empty layer
    assert HeadSet([[1, 2], [0, 3], [1, 0]]) == want  # summary.json's lists
    assert HeadSet([(np.int64(1), np.int64(2)), (0, 3), (1, 0)]) == want
    assert HeadSet(want) == want


def test_a_head_set_is_a_frozenset_of_pairs() -> None:
    heads = HeadSet({0: [1], 2: [0]})
    assert heads == frozenset({(0, 1), (2, 0)}) and hash(heads) == hash(frozenset({(0, 1), (2, 0)}))
    assert {frozenset({(2, 0), (0, 1)}): "found"}[heads] == "found"  # keys of either kind meet
    assert all(type(layer) is int and type(head) is int for layer, head in HeadSet([(np.int32(1), 2.0)]))
    assert pickle.loads(pickle.dumps(heads)) == heads  # travels to worker processes
    assert type(pickle.loads(pickle.dumps(heads))) is HeadSet


def test_the_written_spellings() -> None:
    heads = HeadSet([(1, 0), (0, 3), (1, 2)])
    assert heads.pairs() == [[0, 3], [1, 0], [1, 2]]  # summary.json
    assert heads.key() == "[[0,3],[1,0],[1,2]]"  # committed stores are keyed by exactly this
    assert HeadSet().key() == "[]"
    assert heads.ordered() == ((0, 3), (1, 0), (1, 2))  # a SeedTask's pruned
    assert heads.by_layer() == {0: [3], 1: [0, 2]}
    assert list(heads.by_layer()) == [0, 1]
    assert repr(heads) == "HeadSet([[0, 3], [1, 0], [1, 2]])"


@pytest.mark.parametrize(
    ("spec", "pairs"),
    [
        ("", []),
        ("0:1,2", [(0, 1), (0, 2)]),
        ("3:*", [(3, h) for h in range(4)]),
        (" 1 : 1-3 ;0:0", [(0, 0), (1, 1), (1, 2), (1, 3)]),
        ("2:1;2:0,1", [(2, 0), (2, 1)]),
    ],
)
def test_a_head_spec_is_parsed_and_printed_back(spec: str, pairs: list) -> None:
    heads = HeadSet.parse(spec, 4, 4)
    assert heads == HeadSet(pairs)
    assert HeadSet.parse(heads.spec(4), 4, 4) == heads


def test_spec_writes_a_whole_layer_as_a_star() -> None:
    assert HeadSet({3: range(4), 0: [2, 1]}).spec(4) == "0:1,2;3:*"
    assert HeadSet().spec(4) == ""


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0-1", "no ':' between the layer and its heads"),
        ("x:1", "'x' is not a layer number"),
        ("0:1,,2", "a head is missing"),
        ("4:0", "layer 4 does not exist"),
        ("0:4", "head 4 of layer 0 does not exist"),
        ("0:3-1", "backwards range"),
    ],
)
def test_an_unreadable_spec_is_one_line_naming_the_piece(spec: str, message: str) -> None:
    with pytest.raises(HeadpruneError, match=message):
        HeadSet.parse(spec, 4, 4)


def test_within_checks_a_set_against_the_model_shape() -> None:
    assert HeadSet({1: [3]}).within(2, 4) == HeadSet({1: [3]})
    with pytest.raises(HeadpruneError, match="layer 2 does not exist"):
        HeadSet({2: [0]}).within(2, 4)
    with pytest.raises(HeadpruneError, match="head 4 of layer 0 does not exist"):
        HeadSet([(0, 4)]).within(2, 4)
    with pytest.raises(HeadpruneError, match="layer -1 does not exist"):
        HeadSet([(-1, 0)]).within(2, 4)
