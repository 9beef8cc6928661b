"""`headprune run`'s options over a profile or a configuration file, and the configuration a run
writes back (`RUN_DIR/config.toml`).

Every option stands for one TOML key (`--text-column` is `data.text_column`, `--set KEY=VALUE` any
key) and is applied by rebuilding the configuration from its dictionary with the key replaced, so an
option is read, checked and refused exactly as the same key in a file is. Dataset roles: `--data`
fills every role (`ROLES`: the three datasets keys and the warm-up's) that its own option does not
name; with neither, the profile's datasets stay. Paths given on the command line (options or `--set`)
are made absolute against the current directory, so that the written configuration reruns from any
directory."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from .config import Config, from_dict
from .errors import HeadpruneError

# The dataset roles, as (TOML key, what the role does): `--data` fills those not named otherwise.
ROLES: dict[str, str] = {
    "step1.datasets": "Step 1 learns the heads' importance order on them",
    "step2.datasets": "Step 2 searches and chooses the pruned models on them",
    "generalization.datasets": "the chosen models are compared with the complete model on them, with "
                               "the generalization seeds",
    "model.mlm_head_warmup_datasets": "a checkpoint without a trained masked-LM head (MiniLM) warms a fresh "
                                      "one up on their texts",
}


def parse_assignment(text: str) -> tuple[str, Any]:
    """'KEY=VALUE' (`--set`) -> (dotted key, value): VALUE read as a TOML value (3, 2e-5, true,
    ["a", "b"], "text"), else taken as a string (so `--set step2.seeds=1-3` needs no quotes)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or "." not in key:
        raise HeadpruneError(f"--set {text}: write SECTION.KEY=VALUE, e.g. --set step2.seeds=1-3")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, absolute_paths(key, value)


def absolute_paths(key: str, value: Any) -> Any:
    """A command line's `value` of `key` with its relative paths made absolute: the datasets of a
    role (`ROLES`; a string is split at commas as the role's option is) and `data.data_dir`, as
    `--data` and `--data-dir` do. Other keys, and values of a type the key cannot take, pass as
    they are (the configuration refuses them naming the key)."""
    if key in ROLES:
        if isinstance(value, str):
            return dataset_items([value])
        if isinstance(value, list):
            return [_absolute_if_file(v) if isinstance(v, str) else v for v in value]
    if key == "data.data_dir" and isinstance(value, str) and value:
        return str(Path(value).resolve())
    return value


def _absolute_if_file(item: str) -> str:
    """A user's dataset file as an absolute path; a bundled name or group (no such file) as it is."""
    return str(Path(item).resolve()) if Path(item).is_file() else item


def dataset_items(values: list[str] | None) -> list[str]:
    """Datasets as options give them (repeated, or comma-separated): user files made absolute, so
    the written configuration reruns from any directory; bundled names and groups as they are."""
    out = []
    for value in values or []:
        for item in (part.strip() for part in value.split(",")):
            if item:
                out.append(_absolute_if_file(item))
    return out


def role_overrides(data: list[str], named: dict[str, list[str]]) -> dict[str, list[str]]:
    """The dataset of each role (`ROLES`): the role's own option, else `--data`; roles with neither
    are left out (the profile's stay)."""
    out = {}
    for key in ROLES:
        chosen = named.get(key) or data
        if chosen:
            out[key] = chosen
    return out


def with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """`config` with each dotted key of `overrides` replaced; None values are left out. Checked as
    the same keys in a TOML file are (an unknown key, a wrong type: one line naming it)."""
    nested = config.to_dict()
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if section not in nested or not isinstance(nested[section], dict):
            raise HeadpruneError(f"{dotted}: unknown section [{section}] (known: {', '.join(nested)})")
        nested[section][key] = value
    return from_dict(nested, source=config.source)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def to_toml(config: Config, comment: str = "") -> str:
    """The configuration as TOML that `load_config` reads back to an equal configuration: every
    key, defaults included, so that a later change of a default does not change a rerun."""
    lines = [f"# {line}" if line else "#" for line in comment.splitlines()]
    for section, values in config.to_dict().items():
        lines += ["", f"[{section}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


__all__ = ["ROLES", "absolute_paths", "dataset_items", "parse_assignment", "role_overrides", "to_toml",
           "with_overrides"]
