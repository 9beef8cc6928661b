"""The CLI package: each module imports on its own (no import cycle), the app lists exactly the
README's commands, and command modules never import the app (they are registered by `cli/app.py`)."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import headprune.cli

COMMANDS = ["datasets", "importance", "score", "run", "profiles", "report", "verify", "replay", "export", "finetune",
            "predict"]
CLI_DIR = Path(headprune.cli.__file__).parent
README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    """The commands of the README's "Command line" table, in its order."""
    section = README.read_text().split("## Command line", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `headprune ")]
    names = [name for row in rows for name in re.findall(r"`headprune (\w+)", row.split(" | ")[0])]
    return list(dict.fromkeys(names))


def test_readme_lists_the_commands() -> None:
    assert readme_commands() == COMMANDS


@pytest.mark.parametrize("module", ["options", "compute", "results", "app"])
def test_each_cli_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    code = (
        f"import json, headprune.cli.{module}\n"
        "from headprune.cli import app, main\n"
        "print(json.dumps([c.name for c in app.registered_commands]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == COMMANDS


def test_python_m_headprune_cli_lists_the_commands() -> None:
    done = subprocess.run([sys.executable, "-m", "headprune.cli", "--help"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    for name in COMMANDS:
        assert re.search(rf"^\W*{name}\s", done.stdout, re.MULTILINE), (name, done.stdout)


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside functions, as an absolute dotted name."""
    package = "headprune.cli"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("module", ["options", "compute", "results"])
def test_command_modules_never_import_the_app(module: str) -> None:
    names = imported_modules(CLI_DIR / f"{module}.py")
    assert not any(name.startswith("headprune.cli.app") for name in names), names
