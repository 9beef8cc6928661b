"""One validated configuration object for `headprune run` (TOML); the paper and quick profiles.

Every shortening of the paper's protocol is a named option here (k step for H1, heads per step for
H2/H3, epochs, seeds, datasets, warm-up steps), never a code path of its own."""

from __future__ import annotations

import re
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import tomllib

from .errors import HeadpruneError
from .settings import ScoreSettings

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


@dataclass
class ModelSection:
    name: str = "minilm"
    mlm_head_warmup_steps: int = 300  # only for checkpoints without a trained MLM head; 0 = none
    cache_dir: str = ""  # warmed-up heads; default ~/.cache/headprune
    trust_remote_code: bool = False


@dataclass
class DataSection:
    data_dir: str = ""
    text_column: str = "tweet"
    label_column: str = "class"
    max_examples: int = 0  # > 0: a stratified, seeded subsample of each dataset (a departure, for speed)


@dataclass
class Step1Section:
    datasets: list[str] = field(default_factory=lambda: ["G1"])
    seeds: Any = "1-10"
    epochs: int = 4
    batch_size: int = 16
    learning_rate: float = 2e-5
    adam_epsilon: float = 1e-8
    workers: int = 0  # finetunings at once, in processes; 0: 6 on a GPU, 1 on a CPU (same results either way)


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


@dataclass
class GeneralizationSection:
    datasets: list[str] = field(default_factory=lambda: ["G3"])
    seeds: Any = "101-110"
    alpha: float = 0.05


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


@dataclass
class Config:
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
    def generalization_seeds(self) -> list[int]:
        return parse_seeds(self.generalization.seeds, "generalization.seeds")


_SECTIONS = {f.name: f.type for f in fields(Config) if f.name != "source"}
_SECTION_CLASSES = {
    "model": ModelSection,
    "data": DataSection,
    "step1": Step1Section,
    "scoring": ScoreSettings,
    "step2": Step2Section,
    "generalization": GeneralizationSection,
    "run": RunSection,
}


def _check_type(where: str, value: Any, default: Any, hint: Any = None) -> Any:
    """`value` if it has the type of `default` (and, for a list, the element type `hint` declares);
    else one error line naming the key (a wrong element would otherwise surface as a TypeError later)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
        kind = "true or false"
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        kind = "an integer"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        kind = "a number"
        value = float(value) if ok else value
    elif isinstance(default, str) and not where.endswith(".seeds"):
        ok = isinstance(value, str)
        kind = "a string"
    elif isinstance(default, list):
        element = typing.get_args(hint)[0] if typing.get_args(hint) else None
        ok = isinstance(value, list)
        kind = "a list"
        if element is int:
            ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            kind = "a list of integers"
        elif element is str:
            ok = ok and all(isinstance(v, str) for v in value)
            kind = "a list of strings"
    else:
        ok, kind = True, ""
    if not ok:
        raise HeadpruneError(f"{where}: expected {kind}, got {value!r}")
    return value


def from_dict(data: dict, source: str = "") -> Config:
    where = f"{source}: " if source else ""
    config = Config(source=source)
    for section, values in data.items():
        if section not in _SECTION_CLASSES:
            raise HeadpruneError(f"{where}unknown section [{section}] (known: {', '.join(_SECTION_CLASSES)})")
        if not isinstance(values, dict):
            raise HeadpruneError(f"{where}[{section}] must be a table")
        target = getattr(config, section)
        known = {f.name for f in fields(target)}
        hints = typing.get_type_hints(type(target))
        updates = {}
        for key, value in values.items():
            if key not in known:
                raise HeadpruneError(f"{where}unknown key '{section}.{key}' (known: {', '.join(sorted(known))})")
            updates[key] = _check_type(f"{where}{section}.{key}", value, getattr(target, key), hints.get(key))
        setattr(config, section, replace(target, **updates))
    validate(config, where)
    return config


def validate(config: Config, where: str = "") -> None:
    def bad(message: str) -> None:
        raise HeadpruneError(f"{where}{message}")

    for name in ("step1", "scoring"):
        section = getattr(config, name)
        for key in ("epochs", "batch_size"):
            if getattr(section, key) < 1:
                bad(f"{name}.{key} must be at least 1, got {getattr(section, key)}")
        if not section.learning_rate > 0:
            bad(f"{name}.learning_rate must be positive")
    if not 0 < config.scoring.mlm_probability < 1:
        bad(f"scoring.mlm_probability must be between 0 and 1, got {config.scoring.mlm_probability}")
    if config.scoring.n_folds < 2:
        bad(f"scoring.n_folds must be at least 2, got {config.scoring.n_folds}")
    if config.scoring.feature_layers < 1:
        bad("scoring.feature_layers must be at least 1")
    if not 8 <= config.scoring.max_length <= 512:
        bad(f"scoring.max_length must be between 8 and 512, got {config.scoring.max_length}")
    if config.data.max_examples < 0:
        bad("data.max_examples must be 0 (all) or more")
    if config.model.mlm_head_warmup_steps < 0:
        bad("model.mlm_head_warmup_steps must be 0 or more")
    for s in config.step2.strategies + config.step2.random_order_strategies:
        if s not in STRATEGIES:
            bad(f"step2 strategy '{s}' is unknown (use H1, H2, H3)")
    for order in config.step2.orders:
        if order != "OI" and not re.fullmatch(r"A[1-9]\d*", order):
            bad(f"step2.orders: '{order}' is unknown (use OI for the Step 1 order, A1, A2, ... for random orders)")
    if config.step2.h1_k_step < 1:
        bad(f"step2.h1_k_step must be at least 1, got {config.step2.h1_k_step}")
    if any(k < 0 for k in config.step2.h1_k_values):
        bad("step2.h1_k_values must be 0 or more")
    if config.step2.group_size < 1:
        bad(f"step2.group_size must be at least 1, got {config.step2.group_size}")
    if not 0 < config.generalization.alpha < 1:
        bad(f"generalization.alpha must be between 0 and 1, got {config.generalization.alpha}")
    if not 0 < config.run.ray_gpus_per_task <= 1:
        bad(f"run.ray_gpus_per_task must be in (0, 1], got {config.run.ray_gpus_per_task}")
    if config.step1.workers < 0:
        bad(f"step1.workers must be 0 (automatic) or more, got {config.step1.workers}")
    if config.run.pack_models < 0:
        bad(f"run.pack_models must be 0 (as many as fit) or more, got {config.run.pack_models}")
    if config.run.ray_max_retries < 0:
        bad(f"run.ray_max_retries must be 0 or more, got {config.run.ray_max_retries}")
    if config.run.engine not in ("auto", "reference", "batched"):
        bad(f"run.engine must be 'auto', 'reference' or 'batched', got '{config.run.engine}'")
    if config.run.executor not in ("in-process", "ray"):
        bad(f"run.executor must be 'in-process' or 'ray', got '{config.run.executor}'")
    for name, spec in (
        ("step1.seeds", config.step1.seeds),
        ("step2.seeds", config.step2.seeds),
        ("generalization.seeds", config.generalization.seeds),
    ):
        parse_seeds(spec, f"{where}{name}")
    for name in ("step1", "step2", "generalization"):
        datasets = getattr(config, name).datasets
        if not datasets or not all(isinstance(d, str) for d in datasets):
            bad(f"{name}.datasets must be a non-empty list of dataset or group names")
    if "OI" in config.step2.orders and not config.step2.strategies:
        bad("step2.strategies is empty")


def load_config(path: str | Path) -> Config:
    path = Path(path)
    if path.is_dir():
        raise HeadpruneError(f"--config {path}: is a directory, not a TOML file")
    if not path.is_file():
        raise HeadpruneError(f"--config {path}: file not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise HeadpruneError(f"{path}: invalid TOML ({err})") from None
    except UnicodeDecodeError:
        raise HeadpruneError(f"{path}: not UTF-8 text") from None
    return from_dict(data, source=str(path))


def departures(config: Config) -> list[str]:
    """Every way this configuration departs from the paper's protocol (configs/paper.toml), in words."""
    paper = Config()
    out: list[str] = []
    pairs = [
        ("data.max_examples", config.data.max_examples, 0),
        ("step1.datasets", config.step1.datasets, paper.step1.datasets),
        ("step1.seeds", config.step1_seeds, paper.step1_seeds),
        ("step1.epochs", config.step1.epochs, paper.step1.epochs),
        ("scoring.epochs", config.scoring.epochs, paper.scoring.epochs),
        ("scoring.n_folds", config.scoring.n_folds, paper.scoring.n_folds),
        ("step2.datasets", config.step2.datasets, paper.step2.datasets),
        ("step2.seeds", config.step2_seeds, paper.step2_seeds),
        ("step2.orders", config.step2.orders, paper.step2.orders),
        ("step2.random_order_strategies", config.step2.random_order_strategies, paper.step2.random_order_strategies),
        ("step2.h1_k_step", config.step2.h1_k_step, 1),
        ("step2.h1_k_values", config.step2.h1_k_values, []),
        ("step2.group_size", config.step2.group_size, 1),
        ("generalization.datasets", config.generalization.datasets, paper.generalization.datasets),
        ("generalization.seeds", config.generalization_seeds, paper.generalization_seeds),
    ]
    for name, value, expected in pairs:
        if value != expected:
            out.append(f"{name} = {value} (paper: {expected})")
    return out
