"""The shipped profiles: TOML configurations installed with the package (this folder), usable as
`headprune run --profile NAME` from any directory, listed by `headprune profiles`.

A profile file's opening comment says what it is for and what it shortens; `headprune profiles`
prints its first line. `LADDER` orders the profiles a time budget chooses among, least faithful to
the paper's protocol first (all on the same model, so one calibration times them all)."""

from __future__ import annotations

import tomllib
from importlib import resources

from ..config import Config, from_dict
from ..errors import HeadpruneError

# `--budget` climbs this ladder: each profile shortens the protocol less than the one before it.
LADDER = ("quick", "cpu-hour", "paper-minilm")
# `headprune run` without --config or --profile.
DEFAULT_PROFILE = "quick"


def profile_names() -> list[str]:
    """Every shipped profile, the budget ladder's first, then the others by name."""
    found = sorted(p.name.removesuffix(".toml") for p in resources.files(__name__).iterdir()
                   if p.name.endswith(".toml"))
    return [n for n in LADDER if n in found] + [n for n in found if n not in LADDER]


def profile_text(name: str) -> str:
    """The TOML text of profile `name`; an unknown name is one line listing the known ones."""
    if name not in profile_names():
        raise HeadpruneError(f"--profile {name}: no such profile (known: {', '.join(profile_names())})")
    return (resources.files(__name__) / f"{name}.toml").read_text(encoding="utf-8")


def load_profile(name: str) -> Config:
    """Profile `name` as a validated configuration (its `source` is "profile NAME")."""
    return from_dict(tomllib.loads(profile_text(name)), source=f"profile {name}")


def profile_description(name: str) -> str:
    """The first line of the profile's opening comment."""
    for line in profile_text(name).splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


__all__ = ["DEFAULT_PROFILE", "LADDER", "load_profile", "profile_description", "profile_names", "profile_text"]
