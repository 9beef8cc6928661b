"""summary.py: the typed summary.json reads what it writes, and refuses a malformed one in one line naming the key."""

from __future__ import annotations

import json
import re

import pytest

from _tiny import make_summary, write_summary
from headprune.errors import HeadpruneError
from headprune.summary import SCHEMA_VERSION, ChosenModel, Summary, load_summary
from headprune.summary import write_summary as write_typed


def _v1(summary: dict) -> dict:
    """make_summary() as the pipeline writes it: H2/H3 entries say their departure (null: none)."""
    for key in ("h2", "h3"):
        for entry in summary[key].values():
            entry["departure"] = None
    return summary


def test_a_summary_without_schema_version_is_version_1_and_round_trips(tmp_path):
    data = _v1(make_summary())
    write_summary(tmp_path, data)
    loaded = load_summary(tmp_path)
    assert loaded.schema_version == 1 and loaded.path == tmp_path / "summary.json"
    assert loaded.to_json() == {"schema_version": 1, **data}
    assert isinstance(loaded.chosen["MOIH1"], ChosenModel) and loaded.chosen["MOIH1"].pruned_heads[0] == (1, 0)
    assert loaded.generalization.models["CM"]["aisopos"].mean == data["generalization"]["CM"]["aisopos"]["mean"]
    assert [s.better for s in loaded.generalization.significance] == ["MOIH1", "MA1H3"]
    assert loaded.random_means["MAMH1"].n_pruned == 2.0 and set(loaded.random_means["MAMH1"].datasets) == {
        "aisopos", "sanders"}


def test_write_summary_then_load_summary_is_the_same_summary(tmp_path):
    summary = Summary.from_json({**_v1(make_summary()), "schema_version": SCHEMA_VERSION})
    path = write_typed(tmp_path / "summary.json", summary)
    assert load_summary(path) == summary
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION


def test_orders_stability_and_h1_seed_scores_round_trip(tmp_path):
    """Schema 4: each order's stability (measured, or a note) and H1's per-seed scores are typed parts."""
    data = _v1(make_summary(version=4))
    summary = load_summary(write_summary(tmp_path, data))
    assert summary.schema_version == 4 <= SCHEMA_VERSION  # a version-4 file reads as one
    fisher = summary.orders["fisher"].stability
    assert fisher.runs == 4 and fisher.seeds.spearman == 0.61 and fisher.datasets.spearman_within_layers is None
    assert fisher.bootstrap.bottom_k["2"].agreement == 0.75 and len(fisher.bootstrap.bottom_k["4"].frequency) == 2
    assert summary.orders["magnitude"].kind == "weights" and summary.orders["magnitude"].stability.note
    assert summary.orders["magnitude"].stability.runs is None
    assert summary.h1["OI-layer"].seeds == [1, 2] and len(summary.h1["OI-layer"].seed_scores["person"]["2"]) == 2
    assert summary.to_json() == data
    older = load_summary(write_summary(tmp_path / "v3", _v1(make_summary(version=3))))
    assert older.orders["OI"].stability is None and older.h1["OI"].seed_scores is None


def test_a_race_gives_each_candidate_its_own_seeds():
    """`Racing.scored_seeds`: a survivor all of the race's seeds, a dropped candidate the first
    `after_seeds`, one its screen dropped none, the complete model all (the comparison scores it)."""
    from headprune.summary import Racing

    def drop(n_pruned, after, fidelity=None):
        out = {"round": 1, "n_pruned": n_pruned, "pruned_heads": [], "after_seeds": after, "p_value": 0.01,
               "test": "wilcoxon"}
        return out if fidelity is None else {**out, "fidelity": fidelity}

    racing = Racing.from_json({"confidence": 0.95, "first_test": 2, "seeds": [3, 1, 2], "decisions": [],
                               "eliminations": [drop(4, 2), drop(8, 3, "no-adjust"), drop(0, 2)]}, "racing")
    assert racing.scored_seeds(4) == [3, 1]
    assert racing.scored_seeds(8) == []
    assert racing.scored_seeds(2) == [3, 1, 2] == racing.scored_seeds(0)


def _drop(*keys):
    def change(summary: dict) -> None:
        part = summary
        for key in keys[:-1]:
            part = part[key]
        del part[keys[-1]]
    return change


def _set(value, *keys):
    def change(summary: dict) -> None:
        part = summary
        for key in keys[:-1]:
            part = part[key]
        part[keys[-1]] = value
    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (_drop("h1", "OI", "ranking", 0, "rank_sum"), "missing or invalid 'h1.OI.ranking[0].rank_sum' (absent)"),
        (_drop("generalization", "significance"), "missing or invalid 'generalization.significance' (absent)"),
        (_drop("h2", "A1", "per_dataset", "movie", "pruned_heads"),
         "missing or invalid 'h2.A1.per_dataset.movie.pruned_heads' (absent)"),
        (_set("five", "chosen", "MOIH1", "n_pruned"), "'chosen.MOIH1.n_pruned' must be an integer, got \"five\""),
        (_set(True, "h1", "OI", "chosen_k"), "'h1.OI.chosen_k' must be an integer, got true"),
        (_set([[1]], "chosen", "MOIH1", "pruned_heads"),
         "'chosen.MOIH1.pruned_heads[0]' must be a [layer, head] pair, got a list"),
        (_set(None, "generalization", "CM", "aisopos", "mean"),
         "'generalization.CM.aisopos.mean' must be a number, got null"),
        (_set({"x": 1}, "orders", "OI", "ranked"), "'orders.OI.ranked' must be a list, got a JSON object"),
        (_set(0, "model", "n_heads"), "'model.n_heads' must be a positive integer, got 0"),
        (_set(1, "h2", "OI", "extra"), "unknown key 'h2.OI.extra'"),
        (_set(SCHEMA_VERSION + 1, "schema_version"), f"schema_version {SCHEMA_VERSION + 1} is newer than this version"),
        (_set("2", "schema_version"), "'schema_version' must be a positive integer, got \"2\""),
        (_set("high", "orders", "fisher", "stability", "seeds", "spearman"),
         "'orders.fisher.stability.seeds.spearman' must be a number, got \"high\""),
        (_drop("orders", "OI", "stability", "bootstrap", "bottom_k", "2", "frequency"),
         "missing or invalid 'orders.OI.stability.bootstrap.bottom_k.2.frequency' (absent)"),
        (_set(["0.8"], "h1", "OI", "seed_scores", "person", "4"),
         "'h1.OI.seed_scores.person.4[0]' must be a number, got \"0.8\""),
    ],
)
def test_a_malformed_summary_is_one_error_line_naming_the_key(tmp_path, change, message):
    data = make_summary(version=4)
    change(data)
    path = write_summary(tmp_path, data)
    with pytest.raises(HeadpruneError, match=re.escape(message)) as info:
        load_summary(tmp_path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: not a headprune run summary this version can check (malformed summary: ")


def test_a_foreign_json_file_is_one_error_line(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps([1, 2]))
    with pytest.raises(HeadpruneError, match=re.escape("(malformed summary: expected a JSON object, got a list)")):
        load_summary(tmp_path)
    (tmp_path / "summary.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(HeadpruneError, match="summary.json: not a JSON file: not UTF-8 text"):
        load_summary(tmp_path)
    with pytest.raises(HeadpruneError, match="no such run directory"):
        load_summary(tmp_path / "nowhere.txt")


def test_config_value_and_need_name_what_is_missing(tmp_path):
    write_summary(tmp_path, {"model": {"n_layers": 2, "n_heads": 2}, "config": {"step2": {}}})
    summary = load_summary(tmp_path)
    with pytest.raises(HeadpruneError, match=re.escape("missing or invalid 'config.step2.seeds' (absent)")):
        summary.config_value("step2", "seeds")
    with pytest.raises(HeadpruneError, match=re.escape("missing or invalid 'model.fingerprint' (absent)")):
        summary.need(summary.model.fingerprint, "model.fingerprint")
    assert summary.config_value("step2") == {}
