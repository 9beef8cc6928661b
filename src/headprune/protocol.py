"""The dissertation's protocol as a configuration (`PAPER_PROTOCOL`, `paper_config`) and, in words,
every way a configuration departs from it (`departures`, the batched engine's differences included,
`engine_departures`); whether the batched engine runs (`batched_engine`, the one decision). Fields
that change nothing computed are listed in `NOT_DEPARTURES`."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from .config import Config, from_dict, parse_seeds
from .racing import WALK_TEST_WORDS

PAPER_MODEL = "vinai/bertweet-covid19-base-uncased"

# The dissertation's protocol (../shared/METHOD.md; configs/paper.toml), one value per option that
# changes what is computed: `departures` lists every option of a configuration that differs from it.
# `model.mlm_head_warmup_steps` is 0: BERTweet has a trained masked-LM head, so no warm-up runs (a
# warm-up, or a fresh head, is a departure whenever the checkpoint has none; see `departures`).
PAPER_PROTOCOL: dict[str, Any] = {
    "model.name": PAPER_MODEL,
    "model.mlm_head_warmup_steps": 0,
    "data.max_examples": 0,
    "step1.datasets": ["G1"],
    "step1.seeds": list(range(1, 11)),
    "step1.epochs": 4,
    "step1.batch_size": 16,
    "step1.learning_rate": 2e-5,
    "step1.adam_epsilon": 1e-8,
    "scoring.epochs": 4,
    "scoring.batch_size": 16,
    "scoring.learning_rate": 2e-5,
    "scoring.adam_epsilon": 1e-8,
    "scoring.mlm_probability": 0.15,
    "scoring.n_folds": 10,
    "scoring.feature_layers": 4,
    "scoring.max_length": 128,
    "step2.datasets": ["G2"],
    "step2.seeds": list(range(1, 11)),
    "step2.strategies": ["H1", "H2", "H3"],
    "step2.orders": ["OI", "A1", "A2", "A3"],
    "step2.random_order_strategies": ["H1", "H2", "H3"],
    "step2.h1_k_step": 1,
    "step2.h1_k_values": [],
    "step2.group_size": 1,
    "step2.racing": False,
    "step2.fresh_seeds": [],  # Tables 7-10 on the selection seeds only
    "generalization.datasets": ["G3"],
    "generalization.seeds": list(range(101, 111)),
    "generalization.alpha": 0.05,
    "run.precision": "fp32",
}

# Options that decide whether and how the batched engine runs: not compared with a value of the
# paper's, their effect is listed by `engine_departures` (dropout per stack, bf16, packs, times).
ENGINE_OPTIONS: dict[str, str] = {
    "run.engine": "the batched engine (auto: on CUDA) or the reference loop",
    "run.pack": "the batched engine's Step 2 packs of different candidates",
    "run.pack_models": "models per pack of the batched engine",
}

# Options that do not change what is computed, so never a departure (every other field of `Config`
# is compared: tests/test_config.py fails on a new field that is in none of these three tables).
NOT_DEPARTURES: dict[str, str] = {
    "source": "the file the configuration came from",
    "model.cache_dir": "a path (where the warmed-up head is cached)",
    "model.trust_remote_code": "a permission to load the checkpoint's own code",
    "model.mlm_head_warmup_datasets": "a warm-up setting: part of the model.mlm_head_warmup_steps line when a "
                                      "warm-up runs, else unused",
    "data.data_dir": "a path (datasets are keyed by their content)",
    "data.text_column": "which column of a file holds the text",
    "data.label_column": "which column of a file holds the label",
    "step1.workers": "number of processes (the same results)",
    "run.device": "where it runs (the engine it chooses is listed by `engine_departures`)",
    "run.executor": "executor choice (in process or Ray: the same scores for the same engine)",
    "run.deterministic": "deterministic CUDA kernels: repeatability of rounding, not the protocol",
    "run.address": "the Ray cluster's address",
    "run.ray_gpus_per_task": "GPU share of a Ray task (speed)",
    "run.ray_max_retries": "retries of a Ray task whose worker died",
    "run.report": "whether the HTML report is written",
    "generalization.safe_k_margin": "an analysis setting of the report (the safe k's margin), not what is computed",
    "run.workers": "number of worker processes of the reference loop (the same scores for the same threads per task)",
    "step2.racing_confidence": "a racing setting: part of the step2.racing line when racing is on, else unused",
    "step2.racing_first_test": "a racing setting: part of the step2.racing line when racing is on, else unused",
    "step2.racing_screen": "a racing setting: part of the step2.racing line when racing is on, else unused",
    "step2.racing_walk_test": "a racing setting: part of the step2.racing line when racing is on, else unused",
}

# Lists compared as sets: their order does not change what is computed.
_UNORDERED = ("step2.strategies", "step2.orders", "step2.random_order_strategies")
_SEEDS = ("step1.seeds", "step2.seeds", "generalization.seeds")


def config_fields(config: Config | None = None) -> list[str]:
    """Every field of the configuration tree as a dotted name ("scoring.epochs"), `source` included."""
    config = config or Config()
    out = []
    for f in fields(config):
        value = getattr(config, f.name)
        out += [f"{f.name}.{g.name}" for g in fields(value)] if hasattr(value, "__dataclass_fields__") else [f.name]
    return out


def config_value(config: Config, name: str) -> Any:
    """The value of a dotted field as `departures` compares it (seeds parsed into lists)."""
    value: Any = config
    for part in name.split("."):
        value = getattr(value, part)
    if name == "step2.fresh_seeds":
        return config.step2_fresh_seeds
    return parse_seeds(value, name) if name in _SEEDS else value


def paper_config() -> Config:
    """`PAPER_PROTOCOL` as a configuration (the reference loop wherever it runs)."""
    nested: dict[str, dict] = {}
    for name, value in PAPER_PROTOCOL.items():
        section, key = name.split(".")
        nested.setdefault(section, {})[key] = value
    nested.setdefault("run", {})["engine"] = "reference"
    return from_dict(nested, source="PAPER_PROTOCOL")


def _engine_device(config: Config, device: str | None) -> str | None:
    """The type of the device evaluations run on, or None where it is not known here: on Ray the
    workers' (`run.device`; auto: the cluster's GPUs decide), else `device` or a named `run.device`."""
    named = None if config.run.device == "auto" else str(config.run.device)
    return named if config.run.executor == "ray" else (device or named)


def batched_engine(config: Config, device: str | None = None) -> bool | None:
    """Whether Step 2's and the generalization's scores come from the batched engine: "batched",
    or "auto" on CUDA (the one rule `executors.make_executor` follows). `device`: the type of the
    device the run resolved ("cuda", "cpu"). None: not known here (see `_engine_device`)."""
    if config.run.engine != "auto":
        return config.run.engine == "batched"
    where = _engine_device(config, device)
    return None if where is None else where.startswith("cuda")


def engine_departures(config: Config, device: str | None = None) -> list[str]:
    """How the batched engine's scores differ from the reference loop's (engine/__init__.py), when
    the run uses it; nothing for the reference loop. Where that is not known here (run.engine =
    auto on an unknown device, or on Ray with run.device = auto), each line says on what it depends."""
    batched = batched_engine(config, device)
    if batched is False:
        return []
    run = config.run
    if batched is None:
        when = "run.engine = auto, if " + ("the Ray cluster has GPUs: " if run.executor == "ray" else "on CUDA: ")
        cuda: bool | None = True  # auto chooses the batched engine on CUDA only
    else:
        where = _engine_device(config, device)
        cuda = None if where is None else where.startswith("cuda")
        when = f"run.engine = {run.engine}" + (" on CUDA: " if run.engine == "auto" else ": ")
    out = [when + "scores from the batched engine, equal to the reference loop's only statistically: dropout "
           "masks are drawn per stack (streams shared by the models trained together), not per model"]
    if cuda is not False:
        out.append(when + ("" if cuda else "on CUDA, ") + "bf16 autocast with fp32 master weights, Adam state and "
                   "loss (the reference loop: fp32)")
    if run.pack:
        size = run.pack_models or "as many as fit"
        out.append(when + f"in Step 2 different candidates train together in masked stacks of {size} "
                   f"(run.pack = true, run.pack_models = {run.pack_models})")
    out.append(when + "the adjusting time of a stack is shared: each of its models reports the stack's wall time")
    return out


def departures(config: Config, device: str | None = None, fresh_mlm_head: bool | None = None) -> list[str]:
    """Every way this configuration departs from the paper's protocol (`PAPER_PROTOCOL`), one line
    each ("scoring.epochs = 1 (paper: 4)"), then the batched engine's differences (`engine_departures`).

    `device`: the type of the device the run resolved ("cuda", "cpu"), which decides the engine when
    `run.engine` is auto. `fresh_mlm_head`: whether the loaded checkpoint lacks a trained masked-LM
    head (`BaseModel.info`); None: not known here, so a non-paper model's warm-up is listed as
    conditional. The paper's model has a trained head, so a warm-up (or a fresh, cold head) is a
    departure whenever the checkpoint has none, and nothing when it has one."""
    out: list[str] = []
    for name, expected in PAPER_PROTOCOL.items():
        if name == "model.mlm_head_warmup_steps":
            out += _warmup_departure(config, fresh_mlm_head)
            continue
        if name == "step2.racing":
            out += _racing_departure(config)
            continue
        if name == "run.precision":
            if config.run.precision != expected:
                out.append(f"run.precision = {config.run.precision}: the adjusting step under {config.run.precision} "
                           f"autocast, fp32 weights, Adam state and loss (paper: {expected})")
            continue
        if name == "step2.fresh_seeds":
            out += _fresh_seeds_departure(config)
            continue
        value = config_value(config, name)
        same = set(value) == set(expected) if name in _UNORDERED else value == expected
        if not same:
            out.append(f"{name} = {value} (paper: {expected})")
    return out + engine_departures(config, device)


def _racing_departure(config: Config) -> list[str]:
    """The racing line, with its settings, when racing is on."""
    step2 = config.step2
    if not step2.racing:
        return []
    return [f"step2.racing = True: seeds raced (racing.py: F-Race with Friedman and Conover tests for H1 and the "
            f"cross-scoring; H2/H3's steps decided by {WALK_TEST_WORDS[step2.racing_walk_test]}), "
            f"confidence {step2.racing_confidence}, "
            f"first test after {step2.racing_first_test} seeds"
            + ("; compared candidates screened first at the low fidelity (no adjusting step, scoring.epochs = 0)"
               if step2.racing_screen else "")
            + "; the paper scores every candidate with every seed (paper: False)"]


def _fresh_seeds_departure(config: Config) -> list[str]:
    """The fresh-seed comparison's line, when it runs."""
    seeds = config.step2_fresh_seeds
    if not seeds:
        return []
    return [f"step2.fresh_seeds = {seeds}: the chosen models and CM also scored on the Step 2 datasets with these "
            "seeds, which no selection used, with the same paired t-tests against CM (Tables 7-10 keep the "
            "selection seeds; the paper has no such comparison) (paper: [])"]


def _warmup_departure(config: Config, fresh_mlm_head: bool | None) -> list[str]:
    """The warm-up line: when the checkpoint has (or, not known, may have) no trained MLM head."""
    steps = config.model.mlm_head_warmup_steps
    if fresh_mlm_head is False or (fresh_mlm_head is None and config.model.name == PAPER_MODEL):
        return []
    on = ", ".join(config.model.mlm_head_warmup_datasets)
    what = f"warmed up for {steps} steps on {on}, encoder frozen" if steps else "used cold, not warmed up"
    what = (f"if the checkpoint has no trained masked-LM head, a fresh one is {what}" if fresh_mlm_head is None
            else f"the checkpoint has no trained masked-LM head; a fresh one is {what}")
    return [f"model.mlm_head_warmup_steps = {steps}: {what} (paper: BERTweet's trained head, no warm-up)"]
