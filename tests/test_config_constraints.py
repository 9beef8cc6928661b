"""Tests generated from the settings' constraints tables (`constraints.py`, after scikit-learn's
`_param_validation`): every key of every section takes the values its constraint offers as valid and
refuses each kind of invalid one with one line naming `section.key`; every field has an entry, so a
constraint cannot be dropped without these tests failing."""

from __future__ import annotations

from dataclasses import MISSING, fields

import pytest

from headprune.config import SECTIONS, Config, ModelSection, Step1Section, Step2Section, from_dict
from headprune.constraints import Interval, Options, check
from headprune.errors import HeadpruneError
from headprune.racing import WALK_TESTS, RacingSettings
from headprune.settings import ImportanceSettings, ScoreSettings, WarmupSettings

# Racing on, so that the racing keys that need it (racing_screen) are valid alone; every seeds
# example has at least as many seeds as the first test needs.
CONTEXT = {"step2": {"racing": True}}

KEYS = [(section, key, constraint) for section, cls in SECTIONS.items()
        for key, constraint in cls.constraints.items()]


def _with(section: str, key: str, value) -> dict:
    data = {name: dict(values) for name, values in CONTEXT.items()}
    data.setdefault(section, {})[key] = value
    return data


def _default(f):
    return f.default_factory() if f.default_factory is not MISSING else f.default


@pytest.mark.parametrize("cls", [*SECTIONS.values(), ImportanceSettings, WarmupSettings, RacingSettings])
def test_every_field_has_exactly_one_constraint(cls) -> None:
    assert list(cls.constraints) and set(cls.constraints) == {f.name for f in fields(cls)}


@pytest.mark.parametrize("cls", [*SECTIONS.values()])
def test_every_default_is_valid(cls) -> None:
    for f in fields(cls):
        check(f.name, _default(f), cls.constraints[f.name])


def test_the_tables_are_every_section() -> None:
    assert set(SECTIONS) == {f.name for f in fields(Config)} - {"source"}


@pytest.mark.parametrize(("section", "key", "constraint"), KEYS, ids=[f"{s}.{k}" for s, k, _ in KEYS])
def test_valid_values_pass(section: str, key: str, constraint) -> None:
    valid, _ = constraint.examples()
    assert valid
    for value in valid:
        config = from_dict(_with(section, key, value))
        got = getattr(getattr(config, section), key)
        assert got == value and type(got) is (float if isinstance(constraint, Interval) and
                                              constraint.kind is float else type(value))


@pytest.mark.parametrize(("section", "key", "constraint"), KEYS, ids=[f"{s}.{k}" for s, k, _ in KEYS])
def test_each_invalid_value_is_one_line_naming_the_key(section: str, key: str, constraint) -> None:
    _, invalid = constraint.examples()
    assert invalid
    for value in invalid:
        with pytest.raises(HeadpruneError) as info:
            from_dict(_with(section, key, value), source="my.toml")
        text = str(info.value)
        assert "\n" not in text
        assert text.startswith(f"my.toml: {section}.{key}"), (value, text)


def test_the_message_shapes() -> None:
    """Wrong type: "KEY: expected <type>, got <value>"; out of bounds: "KEY must be <words>, got <value>"."""
    cases = [
        ({"scoring": {"n_folds": 2.5}}, "scoring.n_folds: expected an integer, got 2.5"),
        ({"scoring": {"learning_rate": "x"}}, "scoring.learning_rate: expected a number, got 'x'"),
        ({"scoring": {"learning_rate": 0}}, "scoring.learning_rate must be positive, got 0.0"),
        ({"scoring": {"max_length": 600}}, "scoring.max_length must be between 8 and 512, got 600"),
        ({"run": {"engine": 3}}, "run.engine: expected a string, got 3"),
        ({"run": {"engine": "fast"}}, "run.engine must be 'auto', 'reference' or 'batched', got 'fast'"),
        ({"step2": {"h1_k_values": [-1]}}, "step2.h1_k_values must be 0 or more, got [-1]"),
        ({"step2": {"racing_screen": "fast"}}, "step2.racing_screen must be \"\" (none) or \"no-adjust\", got 'fast'"),
        ({"step2": {"random_order_strategies": ["H9"]}}, "step2.random_order_strategies: 'H9' is unknown (use H1, "
                                                         "H2, H3)"),
        ({"model": {"mlm_head_warmup_datasets": []}}, "model.mlm_head_warmup_datasets must be a non-empty list of "
                                                      "dataset or group names, got []"),
    ]
    for data, message in cases:
        with pytest.raises(HeadpruneError) as info:
            from_dict(data)
        assert str(info.value) == message


def test_an_integer_for_a_number_becomes_a_float() -> None:
    config = from_dict({"scoring": {"learning_rate": 1}, "run": {"ray_gpus_per_task": 1}})
    assert type(config.scoring.learning_rate) is float and type(config.run.ray_gpus_per_task) is float


# --------------------------------------------------------------------- one home per setting
def test_step1_is_the_importance_settings_fields() -> None:
    """[step1]'s finetuning keys are ImportanceSettings' fields, with its defaults and constraints."""
    step1 = {f.name: f for f in fields(Step1Section)}
    for f in fields(ImportanceSettings):
        assert _default(step1[f.name]) == f.default
        assert Step1Section.constraints[f.name] is ImportanceSettings.constraints[f.name]
    config = from_dict({"step1": {"epochs": 2, "learning_rate": 1e-4}})
    assert config.step1.finetuning() == ImportanceSettings(epochs=2, learning_rate=1e-4)


def test_step2_racing_keys_are_the_racing_settings() -> None:
    step2 = {f.name: f for f in fields(Step2Section)}
    for f in fields(RacingSettings):
        assert _default(step2[f"racing_{f.name}"]) == f.default
        assert Step2Section.constraints[f"racing_{f.name}"] is RacingSettings.constraints[f.name]
    config = from_dict({"step2": {"racing": True, "racing_confidence": 0.9, "racing_walk_test": "t-test"}})
    assert config.step2.racing_settings() == RacingSettings(confidence=0.9, walk_test="t-test")


def test_model_warmup_keys_are_the_warmup_settings() -> None:
    model = {f.name: f for f in fields(ModelSection)}
    for name in ("steps", "datasets"):
        default = WarmupSettings.__dataclass_fields__[name].default
        assert _default(model[f"mlm_head_warmup_{name}"]) == (list(default) if name == "datasets" else default)
        assert ModelSection.constraints[f"mlm_head_warmup_{name}"] is WarmupSettings.constraints[name]
    config = from_dict({"model": {"mlm_head_warmup_steps": 5, "mlm_head_warmup_datasets": ["G2"]}})
    assert config.model.warmup() == WarmupSettings(steps=5, datasets=("G2",))
    assert from_dict({"model": {"mlm_head_warmup_steps": 0}}).model.warmup() is None


def test_the_walk_test_is_checked_by_one_constraint() -> None:
    """The configuration, a race's settings and `replay --walk-test` check the name with the same object."""
    constraint = RacingSettings.constraints["walk_test"]
    assert isinstance(constraint, Options) and constraint.values == WALK_TESTS
    assert Step2Section.constraints["racing_walk_test"] is constraint
    words = "must be one of t-test, predictive, predictive-walk, skeptical, skeptical-walk, got 'bayes'"
    for name, make in (("step2.racing_walk_test", lambda: from_dict({"step2": {"racing_walk_test": "bayes"}})),
                       ("racing walk test", lambda: RacingSettings(walk_test="bayes")),
                       ("--walk-test", lambda: check("--walk-test", "bayes", constraint))):
        with pytest.raises(HeadpruneError) as info:
            make()
        assert str(info.value) == f"{name} {words}"


def test_score_settings_are_the_scoring_section() -> None:
    assert SECTIONS["scoring"] is ScoreSettings


def test_a_recorded_configuration_reads_back_typed_with_what_absent_keys_meant() -> None:
    """summary.json's `config` from an older version: no walk test key meant the t-test, no fresh
    seeds key meant no such comparison; today's written configuration reads back equal."""
    from headprune.config import recorded_config

    old = from_dict({"step2": {"racing": True}}).to_dict()
    del old["step2"]["racing_walk_test"], old["step2"]["fresh_seeds"]
    config = recorded_config(old, "summary.json")
    assert config.step2.racing_settings().walk_test == "t-test" and config.step2_fresh_seeds == []
    today = from_dict({"step2": {"seeds": "1-4"}})
    assert recorded_config(today.to_dict()).to_dict() == today.to_dict()
    with pytest.raises(HeadpruneError, match="^summary.json: step2.racing_confidence must be between 0 and 1"):
        recorded_config({**old, "step2": {**old["step2"], "racing_confidence": 2.0}}, "summary.json")
