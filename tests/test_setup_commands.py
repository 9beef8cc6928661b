"""The README's two set-up commands: CI runs the test command exactly as the README gives it, and
the first command runs a profile that ships with the package."""

from __future__ import annotations

import re
from pathlib import Path

from headprune.profiles import profile_names

ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## Set-up", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip().splitlines()


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    install, tests = setup_commands()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci
    assert "HEADPRUNE_REQUIRE_BROWSER=1" in (ROOT / ".ci" / "run").read_text()
    profile = re.search(r"headprune run --profile (\S+)", install).group(1)
    assert profile in profile_names()
