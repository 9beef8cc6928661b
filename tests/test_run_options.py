"""`headprune run` without a TOML: profiles shipped in the package, options that are TOML keys, the
dataset roles `--data` fills, the RUN_DIR/config.toml a run writes, and `--budget`'s choice."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from _cli import run_cli
from headprune.budget import choose, parse_budget
from headprune.config import from_dict, load_config
from headprune.errors import HeadpruneError
from headprune.overrides import ROLES, parse_assignment, role_overrides, to_toml, with_overrides
from headprune.profiles import LADDER, load_profile, profile_names

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_the_profiles_ship_in_the_package_and_the_repositorys_configs_point_at_them() -> None:
    assert {"quick", "cpu-hour", "paper", "paper-minilm"} <= set(profile_names())
    assert list(LADDER) == profile_names()[: len(LADDER)]
    for name in profile_names():
        assert load_profile(name).source == f"profile {name}"
    for name in ("quick", "paper", "paper-minilm", "orders-minilm"):
        assert load_config(REPO_CONFIGS / f"{name}.toml").to_dict() == load_profile(name).to_dict()
    assert load_profile("paper").model.name == "vinai/bertweet-covid19-base-uncased"


def test_the_cpu_hour_profile_marks_each_shortening_it_makes() -> None:
    import re

    from headprune.profiles import profile_text
    from headprune.protocol import departures

    section, marked = "", set()
    for line in profile_text("cpu-hour").splitlines():
        if header := re.fullmatch(r"\[(\w+)\]\s*(#.*)?", line.strip()):
            section = header.group(1)
        elif option := re.match(r"(\w+)\s*=.*#\s*cpu-hour:", line):
            marked.add(f"{section}.{option.group(1)}")
    named = {line.split(" = ")[0] for line in departures(load_profile("cpu-hour"), "cpu", fresh_mlm_head=True)}
    assert len(marked) >= 12 and marked | {"model.name", "model.mlm_head_warmup_steps"} == named


def test_data_fills_every_role_its_own_option_does_not_name() -> None:
    assert role_overrides(["mine.csv"], {}) == {key: ["mine.csv"] for key in ROLES}
    named = {"generalization.datasets": ["G3"], "step1.datasets": []}
    assert role_overrides(["a.csv", "b.csv"], named) == {
        "step1.datasets": ["a.csv", "b.csv"], "step2.datasets": ["a.csv", "b.csv"],
        "generalization.datasets": ["G3"], "model.mlm_head_warmup_datasets": ["a.csv", "b.csv"]}
    assert role_overrides([], {"step2.datasets": ["person"]}) == {"step2.datasets": ["person"]}


def test_set_reads_toml_values_and_names_a_bad_key() -> None:
    assert parse_assignment("step2.seeds=1-3") == ("step2.seeds", "1-3")
    assert parse_assignment("scoring.epochs=2") == ("scoring.epochs", 2)
    assert parse_assignment('step2.orders=["OI", "A1"]') == ("step2.orders", ["OI", "A1"])
    assert parse_assignment("step2.racing=true") == ("step2.racing", True)
    with pytest.raises(HeadpruneError, match="SECTION.KEY=VALUE"):
        parse_assignment("epochs")
    with pytest.raises(HeadpruneError, match="unknown key 'scoring.epoch'"):
        with_overrides(load_profile("quick"), {"scoring.epoch": 2})
    with pytest.raises(HeadpruneError, match="scoring.epochs: expected an integer"):
        with_overrides(load_profile("quick"), {"scoring.epochs": "two"})


def test_the_written_toml_reads_back_to_the_same_configuration() -> None:
    for name in profile_names():
        config = with_overrides(load_profile(name), {"data.text_column": 'a "quoted" column'})
        assert from_dict(tomllib.loads(to_toml(config, "a comment\nover two lines"))).to_dict() == config.to_dict()


@pytest.fixture
def captured(monkeypatch) -> list:
    """Replace the pipeline by one that records its configuration and runs nothing."""
    import headprune.pipeline

    seen: list = []

    class Recorder:
        def __init__(self, config, run_dir, **_) -> None:
            self.config, self.run_dir = config, Path(run_dir)
            seen.append(config)

        def run(self) -> dict:
            return {}

    monkeypatch.setattr(headprune.pipeline, "Pipeline", Recorder)
    return seen


def test_each_option_is_its_toml_key(captured, monkeypatch, capsys, tmp_path: Path) -> None:
    user = tmp_path / "mine.csv"
    pd.DataFrame({"text": ["a b", "c d", "e f"], "label": ["x", "y", "z"]}).to_csv(user, index=False)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(
        monkeypatch, capsys, "run", "--profile", "quick", "--model", "some/model", "--data", "mine.csv",
        "--generalization-datasets", "aisopos,sentiment140", "--text-column", "text", "--label-column", "label",
        "--device", "cpu", "--set", "step2.seeds=1-3", "--set", "scoring.epochs=2", "--set", "run.report=false",
        "--run-dir", "out")
    assert code == 0, err
    toml = tomllib.loads((Path(__file__).parents[1] / "configs" / "quick.toml").read_text())
    toml["model"].update(name="some/model", mlm_head_warmup_datasets=[str(user.resolve())])
    toml["data"].update(text_column="text", label_column="label")
    toml["step1"]["datasets"] = toml["step2"]["datasets"] = [str(user.resolve())]
    toml["generalization"]["datasets"] = ["aisopos", "sentiment140"]
    toml["step2"]["seeds"] = "1-3"
    toml["scoring"]["epochs"] = 2
    toml["run"].update(device="cpu", report=False)
    assert captured[0].to_dict() == from_dict(toml).to_dict()
    written = load_config(tmp_path / "out" / "config.toml")
    assert written.to_dict() == captured[0].to_dict()


def test_set_makes_dataset_paths_absolute_so_the_written_config_reruns_from_elsewhere(
        captured, monkeypatch, capsys, tmp_path: Path) -> None:
    from headprune.data import load_dataset

    (tmp_path / "work" / "data").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    mine = tmp_path / "work" / "data" / "mine.csv"
    pd.DataFrame({"tweet": ["a b", "c d", "e f"], "class": ["x", "y", "x"]}).to_csv(mine, index=False)
    monkeypatch.chdir(tmp_path / "work")
    code, _, err = run_cli(
        monkeypatch, capsys, "run", "--profile", "quick", "--set", "step1.datasets=data/mine.csv,G1",
        "--set", 'step2.datasets=["data/mine.csv", "person"]', "--set", "generalization.datasets=data/mine.csv",
        "--set", 'model.mlm_head_warmup_datasets=["data/mine.csv"]', "--set", "data.data_dir=data",
        "--set", "data.text_column=data/mine.csv", "--set", "run.report=false", "--run-dir", "run")
    assert code == 0, err
    used = captured[0]
    assert used.step1.datasets == [str(mine), "G1"] and used.step2.datasets == [str(mine), "person"]
    assert used.generalization.datasets == used.model.mlm_head_warmup_datasets == [str(mine)]
    assert used.data.data_dir == str(mine.parent)
    assert used.data.text_column == "data/mine.csv"  # not a path key: as given

    monkeypatch.chdir(tmp_path / "elsewhere")
    code, _, err = run_cli(monkeypatch, capsys, "run", "--config", str(tmp_path / "work" / "run" / "config.toml"),
                           "--run-dir", "again")
    assert code == 0, err
    assert captured[1].to_dict() == used.to_dict()
    assert load_dataset(captured[1].step2.datasets[0]).texts == ["a b", "c d", "e f"]


def test_set_leaves_bundled_names_missing_files_and_other_types_as_given(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_assignment("step2.datasets=G2, person") == ("step2.datasets", ["G2", "person"])
    assert parse_assignment("step2.datasets=no/such.csv") == ("step2.datasets", ["no/such.csv"])
    assert parse_assignment("step2.datasets=3") == ("step2.datasets", 3)  # refused later, naming the key
    assert parse_assignment('data.data_dir=""') == ("data.data_dir", "")


def test_run_refuses_two_sources_and_an_unknown_profile(captured, monkeypatch, capsys) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "run", "--profile", "quick", "--config", "x.toml")
    assert code == 2 and err.strip() == "error: --config and --profile: give one (--budget chooses the profile itself)"
    code, _, err = run_cli(monkeypatch, capsys, "run", "--profile", "nope")
    assert code == 2 and "--profile nope: no such profile (known: quick, cpu-hour, paper-minilm" in err
    code, _, err = run_cli(monkeypatch, capsys, "run", "--budget", "soon")
    assert code == 2 and "--budget soon: write a duration" in err
    assert captured == []


def test_parse_budget() -> None:
    assert parse_budget("45m") == parse_budget("45") == 2700
    assert parse_budget("1h30m") == 5400 and parse_budget("90s") == 90 and parse_budget("2h") == 7200
    for bad in ("", "0", "-5", "inf", "45x"):
        with pytest.raises(HeadpruneError, match="--budget"):
            parse_budget(bad)


def test_the_budget_takes_the_most_faithful_profile_that_fits() -> None:
    estimates = {"quick": 300.0, "cpu-hour": 3000.0, "paper-minilm": 90000.0}
    asked: list[str] = []

    def fake(pipeline) -> float:
        asked.append(pipeline)
        return estimates[pipeline]

    candidates = {name: name for name in LADDER}
    choice = choose(candidates, 3600, fake)
    assert (choice.profile, choice.fits, asked) == ("cpu-hour", True, ["paper-minilm", "cpu-hour"])
    assert choice.record("1h") == {"budget": "1h", "budget_seconds": 3600, "profile": "cpu-hour", "fits": True,
                                   "estimated_seconds": {"paper-minilm": 90000.0, "cpu-hour": 3000.0}}
    assert choose(candidates, 10**6, fake).profile == "paper-minilm"
    low = choose(candidates, 60, fake)
    assert (low.profile, low.fits) == ("quick", False)


# Every key in which the ladder's profiles differ, set to a tiny run's value: whichever profile the
# budget chooses then runs in seconds on the tiny model.
TINY = ["model.mlm_head_warmup_steps=0", "data.max_examples=0", "step1.seeds=1", "step1.epochs=1",
        "scoring.epochs=1", "scoring.n_folds=3", "step2.seeds=1-2", 'step2.strategies=["H1"]',
        'step2.orders=["OI"]', 'step2.random_order_strategies=["H1"]', "step2.h1_k_step=6", "step2.group_size=1",
        "step2.racing=false", "generalization.seeds=101-102", "run.report=false", "run.pack=false"]


def test_a_budgeted_run_records_its_choice_and_its_config_toml_reruns_to_the_same_summary(
        tiny_bert_dir: Path, person_frame: pd.DataFrame, tmp_path: Path, monkeypatch, capsys) -> None:
    import headprune.budget

    # three classes, other column names: any number of classes, the columns named by options
    frame = pd.concat([person_frame[person_frame["class"] == c].head(10) for c in ("positive", "negative")])
    frame = frame.rename(columns={"tweet": "text", "class": "label"})
    frame.loc[frame.index[::3], "label"] = "neutral"
    frame.to_csv(tmp_path / "mine.csv", index=False)
    # The calibration on this machine is environment: the CLI run gets fixed estimates.
    monkeypatch.setattr(headprune.budget, "estimated_seconds",
                        lambda p: {"paper-minilm": 1e6, "cpu-hour": 100.0, "quick": 10.0}[p.config.source.split()[1]])
    monkeypatch.chdir(tmp_path)
    args = ["run", "--budget", "5m", "--model", tiny_bert_dir, "--data", "mine.csv", "--text-column", "text",
            "--label-column", "label", "--device", "cpu", "--run-dir", "run"]
    for setting in TINY:
        args += ["--set", setting]
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "budget 5m: profile cpu-hour (estimates on this machine: paper-minilm ~" in out
    assert "departures from the paper's protocol:" in out and "  - step2.seeds = [1, 2] (paper:" in out
    first = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert first["budget"] == {"budget": "5m", "budget_seconds": 300.0, "profile": "cpu-hour", "fits": True,
                               "estimated_seconds": {"paper-minilm": 1e6, "cpu-hour": 100.0}}
    assert first["config"]["step2"]["datasets"] == [str(tmp_path / "mine.csv")]

    code, _, err = run_cli(monkeypatch, capsys, "run", "--config", "run/config.toml", "--run-dir", "run")
    assert code == 0, err
    again = json.loads((tmp_path / "run" / "summary.json").read_text())
    measured = ("date", "elapsed_seconds", "inference", "budget")
    assert {k: v for k, v in again.items() if k not in measured} == {
        k: v for k, v in first.items() if k not in measured}
