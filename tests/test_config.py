"""Configuration: the shipped profiles load; every mistake is one clear line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from headprune.config import Config, from_dict, load_config, parse_seeds
from headprune.errors import HeadpruneError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["paper.toml", "paper-minilm.toml", "quick.toml", "orders-minilm.toml"])
def test_shipped_configs_load(name: str) -> None:
    config = load_config(ROOT / "configs" / name)
    assert isinstance(config, Config)
    assert config.generalization.alpha == 0.05


def test_paper_profile_is_the_dissertation_protocol() -> None:
    config = load_config(ROOT / "configs" / "paper.toml")
    assert config.model.name == "vinai/bertweet-covid19-base-uncased"
    assert config.step1.datasets == ["G1"] and config.step2.datasets == ["G2"]
    assert config.generalization.datasets == ["G3"]
    assert config.step1_seeds == list(range(1, 11)) and config.step2_seeds == list(range(1, 11))
    assert config.generalization_seeds == list(range(101, 111))
    assert config.step2.orders == ["OI", "A1", "A2", "A3"]
    assert config.step2.strategies == ["H1", "H2", "H3"]
    assert (config.step2.h1_k_step, config.step2.group_size) == (1, 1)
    s = config.scoring
    assert (s.epochs, s.batch_size, s.learning_rate, s.adam_epsilon, s.mlm_probability, s.n_folds) == (
        4, 16, 2e-5, 1e-8, 0.15, 10)


def test_scoring_section_is_the_score_settings() -> None:
    """[scoring] is read into the ScoreSettings that key every score (one list of fields and
    defaults); it is frozen, so a configuration's value is set by replacing it."""
    from headprune.settings import ScoreSettings

    config = from_dict({"scoring": {"epochs": 2, "n_folds": 5}})
    assert config.scoring == ScoreSettings(epochs=2, n_folds=5)
    assert Config().scoring == ScoreSettings()


def test_quick_profile_runs_every_stage() -> None:
    config = load_config(ROOT / "configs" / "quick.toml")
    assert config.model.name == "minilm"
    assert "OI" in config.step2.orders and any(o.startswith("A") for o in config.step2.orders)
    assert set(config.step2.strategies) == {"H1", "H2", "H3"}
    assert len(config.generalization_seeds) >= 2  # t-tests need paired seeds


def test_every_importance_criterion_is_an_order_name() -> None:
    """[step2] orders: OI, OI-layer, fisher, magnitude and A<seed>; the orders profile runs them all."""
    names = ["OI", "OI-layer", "fisher", "magnitude", "A1", "A2", "A12"]
    assert from_dict({"step2": {"orders": names}}).step2.orders == names
    config = load_config(ROOT / "configs" / "orders-minilm.toml")
    assert config.step2.orders == ["OI", "OI-layer", "fisher", "magnitude", "A1", "A2"]
    assert config.step2.strategies == ["H1"] and config.step2.h1_k_step == 6 and config.data.max_examples > 0
    assert config.step2_seeds == [1, 2, 3, 4, 5] and config.scoring.epochs == 2
    assert config.step2.racing and config.step2.racing_first_test <= len(config.step2_seeds)
    for order in ("magnitude", "fisher"):  # any order that is not random needs the strategies
        with pytest.raises(HeadpruneError, match="step2.strategies is empty"):
            from_dict({"step2": {"orders": [order], "strategies": []}})
    assert from_dict({"step2": {"orders": ["A1"], "strategies": []}}).step2.orders == ["A1"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bogus": {}}, "unknown section [bogus]"),
        ({"step2": {"k_step": 3}}, "unknown key 'step2.k_step'"),
        ({"scoring": {"epochs": "four"}}, "scoring.epochs: expected an integer, got 'four'"),
        ({"scoring": {"epochs": -1}}, "scoring.epochs must be at least 0, got -1"),
        ({"step1": {"epochs": 0}}, "step1.epochs must be at least 1, got 0"),
        ({"scoring": {"mlm_probability": 1.5}}, "scoring.mlm_probability must be between 0 and 1"),
        ({"scoring": {"n_folds": 1}}, "scoring.n_folds must be at least 2"),
        ({"step2": {"strategies": ["H4"]}}, "step2.strategies: 'H4' is unknown (use H1, H2, H3)"),
        ({"step2": {"orders": ["B1"]}}, "step2.orders: 'B1' is unknown (use OI, OI-layer, fisher, magnitude, or "
                                        "A<seed> for a random order (A1, A2, ...))"),
        ({"step2": {"orders": ["OI", "oi-layer"]}}, "step2.orders: 'oi-layer' is unknown (use OI, OI-layer,"),
        ({"step2": {"orders": ["A0"]}}, "step2.orders: 'A0' is unknown"),
        ({"step2": {"group_size": 0}}, "step2.group_size must be at least 1"),
        ({"step2": {"seeds": "3-1"}}, "step2.seeds: cannot read '3-1'"),
        ({"generalization": {"alpha": 2.0}}, "generalization.alpha must be between 0 and 1"),
        ({"run": {"executor": "slurm"}}, "run.executor must be 'in-process' or 'ray'"),
        ({"run": {"report": "yes"}}, "run.report: expected true or false"),
        ({"run": {"ray_gpus_per_task": 0}}, "run.ray_gpus_per_task must be in (0, 1]"),
        ({"run": {"ray_max_retries": -1}}, "run.ray_max_retries must be 0 or more"),
        ({"data": {"max_examples": -5}}, "data.max_examples must be 0 (all) or more"),
        ({"step1": {"datasets": []}}, "step1.datasets must be a non-empty list"),
        ({"step1": {"workers": -1}}, "step1.workers must be 0 (automatic) or more"),
        ({"run": {"pack_models": -2}}, "run.pack_models must be 0 (as many as fit) or more"),
        ({"run": {"deterministic": "no"}}, "run.deterministic: expected true or false"),
        # list elements of the wrong type (each used to end in a TypeError traceback)
        ({"step2": {"h1_k_values": ["a"]}}, "step2.h1_k_values: expected a list of integers, got ['a']"),
        ({"step2": {"h1_k_values": [True]}}, "step2.h1_k_values: expected a list of integers, got [True]"),
        ({"step2": {"orders": [3]}}, "step2.orders: expected a list of strings, got [3]"),
        ({"step1": {"datasets": ["G1", 2]}}, "step1.datasets: expected a list of strings, got ['G1', 2]"),
    ],
)
def test_bad_configuration_is_one_clear_line(data: dict, message: str) -> None:
    with pytest.raises(HeadpruneError) as info:
        from_dict(data, source="my.toml")
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("my.toml: ")
    assert message in text


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(HeadpruneError, match="--config .*nope.toml: file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nname = 1\n")
    with pytest.raises(HeadpruneError, match=r"bad.toml: invalid TOML \(.*\(at line 1, column 7\)\)$"):
        load_config(bad)
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    with pytest.raises(HeadpruneError, match="--config .*folder.toml: is a directory, not a TOML file"):
        load_config(folder)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"# caf\xe9\n")
    with pytest.raises(HeadpruneError, match="latin.toml: not UTF-8 text"):
        load_config(latin)


def test_parse_seeds() -> None:
    assert parse_seeds("1-3") == [1, 2, 3]
    assert parse_seeds("1,3,5-6") == [1, 3, 5, 6]
    assert parse_seeds(7) == [7]
    assert parse_seeds([2, 2, 4]) == [2, 4]
    for bad in ("", "a", "5-2", [], ["1"], True):
        with pytest.raises(HeadpruneError):
            parse_seeds(bad)


def test_departures_name_every_shortening() -> None:
    from headprune.protocol import departures

    assert departures(load_config(ROOT / "configs" / "paper.toml"), "cpu") == []
    # The paper's protocol on another model: the model and the fresh head's warm-up depart.
    minilm = departures(load_config(ROOT / "configs" / "paper-minilm.toml"), "cpu", fresh_mlm_head=True)
    assert [line.split(" = ")[0] for line in minilm] == ["model.name", "model.mlm_head_warmup_steps"]
    quick = departures(load_config(ROOT / "configs" / "quick.toml"))
    text = "\n".join(quick)
    for option in ("data.max_examples = 200", "step2.h1_k_step = 24", "step2.group_size = 24", "scoring.epochs = 1",
                   "step2.seeds = [1, 2]"):
        assert option in text


def _changed(value):
    """Another valid value of a protocol option (for the test that changes each one in turn)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2
    if isinstance(value, str):
        return "minilm"
    if len(value) > 1:
        return value[:1]
    return ["person"] if value else [0, 5]


def _with(config: Config, name: str, value) -> Config:
    import dataclasses

    section, key = name.split(".")
    setattr(config, section, dataclasses.replace(getattr(config, section), **{key: value}))
    return config


def test_every_config_field_is_compared_or_excluded() -> None:
    """Each field of the Config tree is a protocol option (`PAPER_PROTOCOL`), an engine option (its
    effect listed by `engine_departures`) or named as no departure: a new field in none fails here."""
    from headprune.protocol import ENGINE_OPTIONS, NOT_DEPARTURES, PAPER_PROTOCOL, config_fields

    tables = [set(PAPER_PROTOCOL), set(ENGINE_OPTIONS), set(NOT_DEPARTURES)]
    assert set(config_fields()) == set().union(*tables)
    assert sum(len(t) for t in tables) == len(set().union(*tables)) == len(config_fields())  # disjoint


def test_each_protocol_option_changed_alone_is_listed() -> None:
    from headprune.protocol import PAPER_PROTOCOL, config_value, departures, paper_config

    assert departures(paper_config(), "cpu") == [] and departures(paper_config(), "cuda") == []
    for name, paper in PAPER_PROTOCOL.items():
        # fresh seeds must miss the selection's 1-10 (an overlap is refused: test_fresh_seeds_...)
        config = _with(paper_config(), name, [201, 202] if name == "step2.fresh_seeds" else _changed(paper))
        fresh = name == "model.mlm_head_warmup_steps"  # a warm-up runs only for a checkpoint without an MLM head
        lines = departures(config, "cpu", fresh_mlm_head=fresh)
        assert len(lines) == 1 and lines[0].startswith(f"{name} = {config_value(config, name)}"), (name, lines)
        if not fresh:
            assert f"(paper: {paper})" in lines[0]
    # The paper's model has a trained head: its warm-up setting never runs, so it never departs.
    assert departures(_with(paper_config(), "model.mlm_head_warmup_steps", 300), "cpu") == []
    assert departures(_with(paper_config(), "model.mlm_head_warmup_steps", 300), "cpu", fresh_mlm_head=False) == []
    cold = departures(paper_config(), "cpu", fresh_mlm_head=True)  # a fresh head used cold departs too
    assert len(cold) == 1 and "not warmed up" in cold[0]
    # Order does not change what is computed: the same strategies in another order are no departure.
    assert departures(_with(paper_config(), "step2.strategies", ["H3", "H1", "H2"]), "cpu") == []


def test_fields_that_change_nothing_computed_are_never_departures() -> None:
    from headprune.protocol import NOT_DEPARTURES, departures, paper_config

    changes = {"model.cache_dir": "/tmp/heads", "model.trust_remote_code": True, "data.data_dir": "/tmp/data",
               "model.mlm_head_warmup_datasets": ["irony"],
               "data.text_column": "text", "data.label_column": "label", "step1.workers": 3, "run.device": "cuda",
               "run.executor": "ray", "run.deterministic": False, "run.address": "auto", "run.ray_gpus_per_task": 0.5,
               "run.ray_max_retries": 1, "run.report": False, "step2.racing_confidence": 0.9,
               "step2.racing_first_test": 4, "step2.racing_screen": "no-adjust",
               "step2.racing_walk_test": "predictive", "generalization.safe_k_margin": 0.02,
               "run.workers": 2}
    assert set(changes) == set(NOT_DEPARTURES) - {"source"}
    config = paper_config()
    for name, value in changes.items():
        config = _with(config, name, value)
    config.source = "elsewhere.toml"
    assert departures(config, "cuda") == []  # run.engine = reference (paper_config)


def test_the_batched_engine_is_listed_with_its_differences() -> None:
    """The batched engine (run.engine = batched, or auto on CUDA: the rule make_executor follows)
    departs from the reference loop: dropout per stack (statistical equality only), bf16 on CUDA,
    packs of candidates in Step 2, a stack's shared adjusting time."""
    from headprune.engine import BatchedExecutor
    from headprune.executors import make_executor
    from headprune.protocol import ENGINE_OPTIONS, batched_engine, departures, paper_config

    def engine(resolved: str | None = None, **run) -> list[str]:
        config = paper_config()
        for key, value in run.items():
            config = _with(config, f"run.{key}", value)
        return departures(config, resolved)

    cuda = engine("cuda", engine="auto")
    assert [line.split(": ", 1)[1] for line in cuda] == [line.split(": ", 1)[1]
                                                         for line in engine("cuda", engine="batched")]
    text = "\n".join(cuda)
    for words in ("equal to the reference loop's only statistically", "dropout masks are drawn per stack",
                  "bf16 autocast", "different candidates train together in masked stacks of as many as fit",
                  "adjusting time of a stack is shared"):
        assert words in text, words
    assert all(line.startswith("run.engine = ") for line in cuda)
    assert engine("cpu", engine="auto") == [] and engine("cuda", engine="reference") == []
    on_cpu = "\n".join(engine("cpu", engine="batched"))
    assert "statistically" in on_cpu and "bf16" not in on_cpu  # fp32 on CPU
    assert "run.pack_models = 8" in "\n".join(engine("cuda", engine="batched", pack_models=8))
    assert "masked stacks" not in "\n".join(engine("cuda", engine="batched", pack=False))
    assert set(ENGINE_OPTIONS) == {"run.engine", "run.pack", "run.pack_models"}
    # Not known here (auto on an unknown device; on Ray the cluster's GPUs decide): said as conditional.
    assert all(line.startswith("run.engine = auto, if on CUDA: ") for line in engine(None, engine="auto"))
    ray = engine("cpu", engine="auto", executor="ray")
    assert ray and all("if the Ray cluster has GPUs" in line for line in ray)
    assert engine("cpu", engine="auto", executor="ray", device="cpu") == []
    for name in ("auto", "batched", "reference"):  # departures and the factory follow the one rule
        config = _with(_with(paper_config(), "run.engine", name), "run.device", "cpu")
        assert isinstance(make_executor(config), BatchedExecutor) == batched_engine(config, "cpu")


def _quick_options() -> list[str]:
    """The options configs/quick.toml marks `# quick:` (its shortenings), as dotted names."""
    import re

    section, names = "", []
    for line in (ROOT / "configs" / "quick.toml").read_text().splitlines():
        if header := re.fullmatch(r"\[(\w+)\]\s*(#.*)?", line.strip()):
            section = header.group(1)
        elif (option := re.match(r"(\w+)\s*=.*#\s*quick:", line)) and section:
            names.append(f"{section}.{option.group(1)}")
    return names


def test_quick_profile_departs_in_each_option_it_marks() -> None:
    from headprune.protocol import departures

    marked = _quick_options()
    assert len(marked) >= 14 and "model.mlm_head_warmup_steps" in marked
    lines = departures(load_config(ROOT / "configs" / "quick.toml"), "cpu", fresh_mlm_head=True)
    named = [line.split(" = ")[0] for line in lines]
    assert set(marked) | {"model.name"} == set(named) and len(named) == len(set(named))
    assert any(line.startswith("model.mlm_head_warmup_steps = 40: ") and "warmed up for 40 steps" in line
               for line in lines)


def test_cap_examples_is_stratified_and_seeded() -> None:
    import numpy as np

    from headprune.data import cap_examples, load_dataset

    person = load_dataset("person")
    capped = cap_examples(person, 200)
    assert len(capped) == 200 and cap_examples(person, 200).texts == capped.texts
    share = np.bincount(person.labels) / len(person)
    assert np.allclose(np.bincount(capped.labels) / 200, share, atol=0.01)
    assert set(capped.texts) <= set(person.texts)
    assert capped.content_hash != person.content_hash
    assert cap_examples(person, 0) is person and cap_examples(person, 10_000) is person


def test_engine_is_chosen_by_device_unless_configured() -> None:
    from headprune.config import Config
    from headprune.engine import BatchedExecutor
    from headprune.executors import InProcessExecutor, ProcessExecutor, WorkerProcesses, make_executor
    from headprune.tasks import Executor

    config = Config()
    config.run.device = "cpu"
    auto = make_executor(config)  # CPU: the reference loop, in worker processes (run.workers = 0: one per core)
    assert isinstance(auto, WorkerProcesses) and auto.requested == 0 and auto.store_tag is None
    config.run.workers = 1
    assert isinstance(make_executor(config), InProcessExecutor)  # in this process
    config.run.workers = 3
    assert make_executor(config).requested == 3
    assert isinstance(make_executor(config, "step1"), InProcessExecutor)  # one Step 1 process on CPU
    config.step1.workers = 3
    step1 = make_executor(config, "step1")
    assert isinstance(step1, ProcessExecutor) and step1.workers == 3
    config.run.engine = "batched"
    assert isinstance(make_executor(config), BatchedExecutor)
    assert make_executor(config, "step2").options.pack and not make_executor(config, "generalization").options.pack
    for executor in (make_executor(config), step1, InProcessExecutor()):  # the declared capabilities
        assert isinstance(executor, Executor)
    assert BatchedExecutor().plans_batch and not InProcessExecutor().plans_batch
    assert InProcessExecutor().store_tag is None and BatchedExecutor().store_tag == "batched"
    with pytest.raises(HeadpruneError, match="run.engine must be"):
        from_dict({"run": {"engine": "turbo"}})
    with pytest.raises(HeadpruneError, match="run.workers must be 0"):
        from_dict({"run": {"workers": -1}})


def test_racing_is_a_departure_that_names_its_settings() -> None:
    from headprune.protocol import departures, paper_config

    config = _with(_with(_with(paper_config(), "step2.racing", True), "step2.racing_confidence", 0.9),
                   "step2.racing_first_test", 4)
    (line,) = departures(config, "cpu")
    assert line.startswith("step2.racing = True") and "confidence 0.9" in line and "after 4 seeds" in line
    assert "Bonferroni over the walk's decisions" in line  # the default walk test: skeptical-walk
    assert "were the step's true difference zero" in line
    (line,) = departures(_with(config, "step2.racing_walk_test", "predictive"), "cpu")
    assert "predictive probability that the remaining seeds flip" in line and "per step" in line
    assert "Bonferroni" not in line and "t-test" not in line
    (line,) = departures(_with(config, "step2.racing_walk_test", "t-test"), "cpu")
    assert "paired sequential t-test" in line and "predictive" not in line


def test_racing_settings_are_checked(tmp_path) -> None:
    from headprune.config import load_config

    for text, message in (("racing_confidence = 1.5", "step2.racing_confidence must be between 0 and 1"),
                          ("racing_first_test = 1", "step2.racing_first_test must be at least 2"),
                          ('racing = "yes"', "step2.racing: expected true or false"),
                          ('racing_screen = "no-adjust"', "step2.racing_screen needs step2.racing = true"),
                          ('racing = true\nracing_screen = "fast"', "step2.racing_screen must be"),
                          ('racing = true\nracing_walk_test = "bayes"', "step2.racing_walk_test must be"),
                          ('racing = true\nseeds = "1-3"\nracing_first_test = 4',
                           "step2.racing_first_test = 4 exceeds the 3 Step 2 seeds")):
        path = tmp_path / "c.toml"
        path.write_text(f"[step2]\n{text}\n")
        with pytest.raises(HeadpruneError, match=message):
            load_config(path)


def test_the_safe_k_margin_is_an_f1_difference(tmp_path) -> None:
    from headprune.config import load_config

    for value in ("-0.01", "1.0", "5"):
        path = tmp_path / "c.toml"
        path.write_text(f"[generalization]\nsafe_k_margin = {value}\n")
        with pytest.raises(HeadpruneError, match="generalization.safe_k_margin must be at least 0 and below 1"):
            load_config(path)
    path.write_text("[generalization]\nsafe_k_margin = 0.02\n")
    assert load_config(path).generalization.safe_k_margin == 0.02


def test_fresh_seeds_are_disjoint_from_the_selection_seeds() -> None:
    """step2.fresh_seeds: "auto" takes as many seeds as step2.seeds from 201 on, skipping selection
    seeds; "none" (or []) turns the fresh-seed comparison off; an overlap is one line naming the key."""
    assert Config().step2_fresh_seeds == list(range(201, 211))  # on by default, beside seeds 1-10
    config = from_dict({"step2": {"seeds": "200-202"}})
    assert config.step2_fresh_seeds == [203, 204, 205] and not set(config.step2_fresh_seeds) & {200, 201, 202}
    assert from_dict({"step2": {"fresh_seeds": "none"}}).step2_fresh_seeds == []
    assert from_dict({"step2": {"fresh_seeds": []}}).step2_fresh_seeds == []
    assert from_dict({"step2": {"seeds": "1-3", "fresh_seeds": [7, 9]}}).step2_fresh_seeds == [7, 9]
    with pytest.raises(HeadpruneError) as error:
        from_dict({"step2": {"seeds": "1-5", "fresh_seeds": "4-8"}}, source="run.toml")
    message = str(error.value)
    assert "\n" not in message and message.startswith("run.toml: step2.fresh_seeds: seed(s) 4, 5 are also")
    with pytest.raises(HeadpruneError, match="step2.fresh_seeds: cannot read"):
        from_dict({"step2": {"fresh_seeds": "soon"}})


def test_fresh_seed_comparison_is_off_in_the_paper_protocol_only() -> None:
    """The paper (and the paper profiles) score Tables 7-10 on the selection seeds alone, with no
    departure; any other configuration adds the fresh-seed comparison and lists it as a departure."""
    from headprune.protocol import departures, paper_config

    for name in ("paper.toml", "paper-minilm.toml"):
        config = load_config(ROOT / "configs" / name)
        assert config.step2_fresh_seeds == []
        assert not any("fresh_seeds" in line for line in departures(config, "cpu", fresh_mlm_head=True))
    assert paper_config().step2_fresh_seeds == [] and departures(paper_config(), "cpu") == []
    quick = load_config(ROOT / "configs" / "quick.toml")
    assert quick.step2_fresh_seeds == [201, 202]
    (line,) = [line for line in departures(quick, "cpu") if line.startswith("step2.fresh_seeds")]
    assert line.startswith("step2.fresh_seeds = [201, 202]: ") and line.endswith("(paper: [])")
    on = _with(paper_config(), "step2.fresh_seeds", "auto")
    assert [line.split(" = ")[0] for line in departures(on, "cpu")] == ["step2.fresh_seeds"]
