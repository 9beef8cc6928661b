"""One validated configuration object for `headprune run` (TOML); the paper and quick profiles.

Every shortening of the paper's protocol is a named option here (k step for H1, heads per step for
H2/H3, epochs, seeds, datasets, warm-up steps), never a code path of its own; `protocol.py` holds the
protocol itself and lists, in words, every way a configuration departs from it."""

from __future__ import annotations

import itertools
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from .constraints import Constraint, Flag, Integers, Interval, Known, Names, Options, Text, check
from .curves import DEFAULT_SAFE_K_MARGIN
from .errors import HeadpruneError, parse_user_file
from .racing import SCREENS, RacingSettings
from .settings import ORDER_NAMES, PRECISIONS, ImportanceSettings, ScoreSettings, WarmupSettings, order_criterion
from .summary import WALK_TEST_BEFORE

STRATEGIES = ("H1", "H2", "H3")


def parse_seeds(spec: Any, option: str = "seeds") -> list[int]:
    """'1-10', '1,3,5', 3, [1, 2] -> a list of ints."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        return [spec]
    if isinstance(spec, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in spec) and spec:
        return list(dict.fromkeys(spec))
    if isinstance(spec, str):
        out: list[int] = []
        for part in spec.split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
            if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
                raise HeadpruneError(f"{option}: cannot read '{spec}' (write e.g. 1-10 or 1,2,3)")
            out += list(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
        if out:
            return list(dict.fromkeys(out))
    raise HeadpruneError(f'{option}: cannot read {spec!r} (write e.g. "1-10", "1,2,3" or a list of integers)')


# `step2.fresh_seeds = "auto"`: as many fresh seeds as Step 2 selection seeds, the first integers from
# this one on that no selection used (201-210 beside the paper's 1-10; clear of the G3 seeds 101-110).
FRESH_SEEDS_START = 201
FRESH_SEEDS_OFF = ("none", "")


def parse_fresh_seeds(spec: Any, selection: list[int], option: str = "step2.fresh_seeds") -> list[int]:
    """The seeds of the fresh-seed G2 comparison: [] when off ("none", "" or an empty list), "auto"
    (`FRESH_SEEDS_START`), or a seeds spec as `parse_seeds` reads it. One error line when a fresh
    seed is also a selection seed: scores on those would carry the selection's bias."""
    if spec == [] or (isinstance(spec, str) and spec.strip().lower() in FRESH_SEEDS_OFF):
        return []
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        used = set(selection)
        candidates = (s for s in itertools.count(FRESH_SEEDS_START) if s not in used)
        return [next(candidates) for _ in selection]
    seeds = parse_seeds(spec, option)
    overlap = sorted(set(seeds) & set(selection))
    if overlap:
        raise HeadpruneError(f"{option}: seed(s) {', '.join(map(str, overlap))} are also Step 2 selection seeds "
                             "(step2.seeds); fresh seeds must be disjoint from them (or write \"auto\")")
    return seeds


@dataclass(frozen=True)
class Seeds(Constraint):
    """A seeds specification as `parse_seeds` reads it ('1-10', '1,3,5', 3, [1, 2])."""

    def clean(self, name: str, value: Any) -> Any:
        parse_seeds(value, name)
        return value

    def examples(self) -> tuple[list, list]:
        return ["1-3", "1,3,5", [1, 2, 3]], ["3-1", "x", [], 1.5, True]


@dataclass(frozen=True)
class FreshSeeds(Constraint):
    """`step2.fresh_seeds`: "auto", off ("none", "" or []), or a seeds specification; that none is a
    selection seed is checked with `step2.seeds` (`parse_fresh_seeds`)."""

    def clean(self, name: str, value: Any) -> Any:
        if value != [] and not (isinstance(value, str) and value.strip().lower() in (*FRESH_SEEDS_OFF, "auto")):
            parse_seeds(value, name)
        return value

    def examples(self) -> tuple[list, list]:
        return ["auto", "none", "", [], "201-203"], ["x", "3-1", 1.5]


def _prefixed(constraints: dict[str, Constraint], prefix: str) -> dict[str, Constraint]:
    """A settings class's table under the section's key names (`racing_` + the field)."""
    return {prefix + key: constraint for key, constraint in constraints.items()}


# Every key of a section has an entry in its `constraints` (its type included): `validate` checks
# them, tests/test_config_constraints.py generates its cases from them. Settings the method keys its
# results by have their one home in `settings.py` (or `racing.RacingSettings`): a section names their
# fields, takes their defaults and their constraints, and builds them (`warmup()`, `finetuning()`, `racing_settings()`).
_WORKERS = Interval(int, 0, words="0 (automatic) or more")
_STRATEGY_NAMES = Known(STRATEGIES, "H1, H2, H3", "H1")


@dataclass
class ModelSection:
    name: str = "minilm"
    # WarmupSettings.steps: only for checkpoints without a trained MLM head; 0 = none
    mlm_head_warmup_steps: int = WarmupSettings.steps
    # whose texts warm that head up (METHOD.md: G1); `run --data` puts the user's files here
    mlm_head_warmup_datasets: list[str] = field(default_factory=lambda: list(WarmupSettings.datasets))
    cache_dir: str = ""  # warmed-up heads; default ~/.cache/headprune
    trust_remote_code: bool = False

    constraints: ClassVar[dict[str, Constraint]] = {
        "name": Text(),
        **_prefixed({k: WarmupSettings.constraints[k] for k in ("steps", "datasets")}, "mlm_head_warmup_"),
        "cache_dir": Text(),
        "trust_remote_code": Flag(),
    }

    def warmup(self) -> WarmupSettings | None:
        """The warm-up of a fresh masked-LM head; None: none (0 steps)."""
        if self.mlm_head_warmup_steps <= 0:
            return None
        return WarmupSettings(steps=self.mlm_head_warmup_steps, datasets=tuple(self.mlm_head_warmup_datasets))


@dataclass
class DataSection:
    data_dir: str = ""
    text_column: str = "tweet"
    label_column: str = "class"
    max_examples: int = 0  # > 0: a stratified, seeded subsample of each dataset (a departure, for speed)

    constraints: ClassVar[dict[str, Constraint]] = {
        "data_dir": Text(),
        "text_column": Text(),
        "label_column": Text(),
        "max_examples": Interval(int, 0, words="0 (all) or more"),
    }


@dataclass
class Step1Section:
    """Which finetunings Step 1 runs (datasets, seeds) and how (`ImportanceSettings`' fields)."""

    datasets: list[str] = field(default_factory=lambda: ["G1"])
    seeds: Any = "1-10"
    epochs: int = ImportanceSettings.epochs
    batch_size: int = ImportanceSettings.batch_size
    learning_rate: float = ImportanceSettings.learning_rate
    adam_epsilon: float = ImportanceSettings.adam_epsilon
    workers: int = 0  # finetunings at once, in processes; 0: 6 on a GPU, 1 on a CPU (same results either way)

    constraints: ClassVar[dict[str, Constraint]] = {
        "datasets": Names(),
        "seeds": Seeds(),
        **ImportanceSettings.constraints,
        "workers": _WORKERS,
    }

    def finetuning(self) -> ImportanceSettings:
        """Step 1's finetuning settings (the key of its stored rows)."""
        return ImportanceSettings(**{f.name: getattr(self, f.name) for f in fields(ImportanceSettings)})


@dataclass
class Step2Section:
    datasets: list[str] = field(default_factory=lambda: ["G2"])
    seeds: Any = "1-10"
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    orders: list[str] = field(default_factory=lambda: ["OI", "A1", "A2", "A3"])
    random_order_strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    h1_k_step: int = 1  # > 1 evaluates k = 0, step, 2*step, ...: a departure from the paper, for speed
    h1_k_values: list[int] = field(default_factory=list)  # explicit k values (overrides h1_k_step)
    group_size: int = 1  # H2/H3 heads added per step; > 1 is a departure from the paper, for speed
    racing: bool = False  # race over seeds (racing.py): F-Race for H1 and cross-scoring, sequential tests for walks
    # RacingSettings' fields as racing_<name>: confidence (1 - the significance level of every racing
    # test), first_test (seeds before the first test), walk_test (H2/H3 steps: racing.WALK_TESTS)
    racing_confidence: float = RacingSettings.confidence
    racing_first_test: int = RacingSettings.first_test
    racing_screen: str = ""  # "no-adjust": race at the low fidelity (scoring.epochs = 0) first; "" none
    racing_walk_test: str = RacingSettings.walk_test
    # Tables 7-10 score the chosen models with the seeds that chose them (the paper's, biased towards
    # them); beside them the same comparison on these seeds, disjoint from `seeds`: "auto" (as many as
    # `seeds`, from 201 on), a seeds spec, or "none" (the paper: no such comparison).
    fresh_seeds: Any = "auto"

    constraints: ClassVar[dict[str, Constraint]] = {
        "datasets": Names(),
        "seeds": Seeds(),
        "strategies": _STRATEGY_NAMES,
        "orders": Known(order_criterion, ORDER_NAMES, "OI"),
        "random_order_strategies": _STRATEGY_NAMES,
        "h1_k_step": Interval(int, 1),
        "h1_k_values": Integers(0),
        "group_size": Interval(int, 1),
        "racing": Flag(),
        **_prefixed(RacingSettings.constraints, "racing_"),
        "racing_screen": Options(("", *SCREENS), words='"" (none) or "no-adjust"'),
        "fresh_seeds": FreshSeeds(),
    }

    def racing_settings(self) -> RacingSettings:
        """The racing settings (`racing_<name>`), as a race takes them."""
        return RacingSettings(**{f.name: getattr(self, f"racing_{f.name}") for f in fields(RacingSettings)})


@dataclass
class GeneralizationSection:
    datasets: list[str] = field(default_factory=lambda: ["G3"])
    seeds: Any = "101-110"
    alpha: float = 0.05
    # The report's safe k per order and dataset: the largest k shown non-inferior to the complete model
    # at this margin of F1 (0.01 = 1 point; curves.largest_safe_k).
    safe_k_margin: float = DEFAULT_SAFE_K_MARGIN

    constraints: ClassVar[dict[str, Constraint]] = {
        "datasets": Names(),
        "seeds": Seeds(),
        "alpha": Interval(float, 0, 1, closed="neither"),
        "safe_k_margin": Interval(float, 0, 1, words="at least 0 and below 1 (an F1 difference)"),
    }


@dataclass
class RunSection:
    device: str = "auto"
    executor: str = "in-process"  # or "ray"
    engine: str = "auto"  # auto: batched engine on CUDA, reference loop on CPU; or "reference", "batched"
    deterministic: bool = True  # CUDA: deterministic kernels (same numbers for the same configuration and seeds)
    pack: bool = True  # batched engine, Step 2: train different candidates together (masked stacks)
    pack_models: int = 0  # models per pack; 0: as many as fit in the GPU's memory
    address: str = ""  # Ray cluster address; empty starts a local Ray
    ray_gpus_per_task: float = 0.25  # GPU share of one evaluation on Ray (several small jobs share a GPU)
    ray_max_retries: int = 3  # retries of an evaluation whose Ray worker died
    report: bool = True
    # Reference-loop evaluations at once, in worker processes; 0: on a CPU one per core (1 thread each,
    # as many as half the memory holds), on a GPU 1; 1: in this process (same scores for the same threads)
    workers: int = 0
    # The reference loop's adjusting: "fp32", or "bf16" autocast with fp32 weights and Adam state (CPUs
    # with bf16 units; a departure, scores under their own keys); the batched engine: bf16 on a CPU too
    precision: str = "fp32"

    constraints: ClassVar[dict[str, Constraint]] = {
        "device": Text(),
        "executor": Options(("in-process", "ray")),
        "engine": Options(("auto", "reference", "batched")),
        "deterministic": Flag(),
        "pack": Flag(),
        "pack_models": Interval(int, 0, words="0 (as many as fit) or more"),
        "address": Text(),
        "ray_gpus_per_task": Interval(float, 0, 1, closed="right"),
        "ray_max_retries": Interval(int, 0),
        "report": Flag(),
        "workers": _WORKERS,
        "precision": Options(PRECISIONS),
    }


@dataclass
class Config:
    """A run's configuration: one section per TOML table (`[model]`, `[data]`, `[step1]`,
    `[scoring]`, `[step2]`, `[generalization]`, `[run]`), each with its constraints table; build it
    with `load_config` (a file) or `from_dict`, which check every key (`validate`)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    step1: Step1Section = field(default_factory=Step1Section)
    scoring: ScoreSettings = field(default_factory=ScoreSettings)  # frozen: set values with replace()
    step2: Step2Section = field(default_factory=Step2Section)
    generalization: GeneralizationSection = field(default_factory=GeneralizationSection)
    run: RunSection = field(default_factory=RunSection)
    source: str = ""

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("source")
        return out

    # ---------------------------------------------------------------- derived values
    @property
    def step1_seeds(self) -> list[int]:
        return parse_seeds(self.step1.seeds, "step1.seeds")

    @property
    def step2_seeds(self) -> list[int]:
        return parse_seeds(self.step2.seeds, "step2.seeds")

    @property
    def step2_fresh_seeds(self) -> list[int]:
        """The fresh-seed G2 comparison's seeds ([]: none), disjoint from `step2_seeds`."""
        return parse_fresh_seeds(self.step2.fresh_seeds, self.step2_seeds)

    @property
    def generalization_seeds(self) -> list[int]:
        return parse_seeds(self.generalization.seeds, "generalization.seeds")


SECTIONS = {
    "model": ModelSection,
    "data": DataSection,
    "step1": Step1Section,
    "scoring": ScoreSettings,
    "step2": Step2Section,
    "generalization": GeneralizationSection,
    "run": RunSection,
}


def from_dict(data: dict, source: str = "") -> Config:
    """The configuration of a TOML document's tables, validated (`validate`): every mistake is one
    error line naming the key (and `source`, the file)."""
    where = f"{source}: " if source else ""
    config = Config(source=source)
    for section, values in data.items():
        if section not in SECTIONS:
            raise HeadpruneError(f"{where}unknown section [{section}] (known: {', '.join(SECTIONS)})")
        if not isinstance(values, dict):
            raise HeadpruneError(f"{where}[{section}] must be a table")
        target = getattr(config, section)
        known = {f.name for f in fields(target)}
        for key in values:
            if key not in known:
                raise HeadpruneError(f"{where}unknown key '{section}.{key}' (known: {', '.join(sorted(known))})")
        setattr(config, section, replace(target, **values))
    return validate(config, where)


def validate(config: Config, where: str = "") -> Config:
    """`config` with every key checked against its section's `constraints` table (an integer given
    for a number becomes a float), then the rules between keys; the first mistake is one error line
    naming the key, after `where` (the file)."""
    sections = {}
    for name in SECTIONS:
        section = getattr(config, name)
        values = {key: check(f"{where}{name}.{key}", getattr(section, key), constraint)
                  for key, constraint in section.constraints.items()}
        sections[name] = replace(section, **values)
    config = replace(config, **sections)
    _check_together(config, where)
    return config


def _check_together(config: Config, where: str) -> None:
    """The rules that involve more than one key."""
    step2 = config.step2
    parse_fresh_seeds(step2.fresh_seeds, config.step2_seeds, f"{where}step2.fresh_seeds")
    if step2.racing_screen and not step2.racing:
        raise HeadpruneError(f"{where}step2.racing_screen needs step2.racing = true")
    n_seeds = len(config.step2_seeds)
    if step2.racing and step2.racing_first_test > n_seeds:
        raise HeadpruneError(f"{where}step2.racing_first_test = {step2.racing_first_test} exceeds the {n_seeds} "
                             "Step 2 seeds: the race would never test (lower it, or give more seeds)")
    if any(order_criterion(o) != "random" for o in step2.orders) and not step2.strategies:
        raise HeadpruneError(f"{where}step2.strategies is empty")


# What a key absent from a recorded configuration (summary.json's `config`, written by an older
# version) meant when the run was made, where that is not today's default: the walk test before it
# was a setting; no fresh-seed comparison before there was one.
RECORDED_BEFORE: dict[str, Any] = {"step2.racing_walk_test": WALK_TEST_BEFORE, "step2.fresh_seeds": "none"}


def recorded_config(data: dict, source: str = "") -> Config:
    """A run's configuration as its summary records it (`Summary.config`), typed and validated as a
    file is: a key the run's version did not write means what it meant then (`RECORDED_BEFORE`),
    any other absent key today's default."""
    nested = {section: dict(values) if isinstance(values, dict) else values for section, values in data.items()}
    for name, value in RECORDED_BEFORE.items():
        section, key = name.split(".")
        if isinstance(nested.get(section, {}), dict) and key not in nested.get(section, {}):
            nested.setdefault(section, {})[key] = value
    return from_dict(nested, source)


def load_config(path: str | Path) -> Config:
    """The configuration in the TOML file `path`, checked: any mistake is one error line naming the
    file and the key."""
    path = Path(path)
    if path.is_dir():
        raise HeadpruneError(f"--config {path}: is a directory, not a TOML file")
    if not path.is_file():
        raise HeadpruneError(f"--config {path}: file not found")
    data = parse_user_file(path, tomllib.loads, str(path))
    return from_dict(data, source=str(path))
