"""Running `headprune` through its real `main()` inside the test process (no subprocess start-up)."""

from __future__ import annotations

import sys

from headprune.cli import main


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `headprune ARGS` through `main()`; any other exception fails the test."""
    monkeypatch.setattr(sys, "argv", ["headprune", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err
