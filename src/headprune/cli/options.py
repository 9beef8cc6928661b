"""What every command shares: its common typer options, the library quieting, the error exit.

Typer reads an option's declaration from the parameter's default value and re-uses the object, so
one declaration here serves each command that takes the option (same flag, default and help)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer

DATA_DIR = typer.Option(None, "--data-dir", help="Folder of the bundled air-datasets CSVs.")
TEXT_COLUMN = typer.Option("tweet", "--text-column", help="Text column of user files.")
LABEL_COLUMN = typer.Option("class", "--label-column", help="Label column of user files.")
RUN_DIR = typer.Option(Path("runs/default"), "--run-dir", help="Where the store, orders and outputs go.")
MODEL = typer.Option("minilm", "--model", help="Hub id, local directory, or 'minilm' (embedded default).")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N.")


def quiet_libraries() -> None:
    """Keep the terminal for our own progress: no per-weight load reports or hub chatter."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # noqa: BLE001
        pass
    logging.getLogger("transformers").setLevel(logging.ERROR)


def fail(message: str, code: int = 2) -> None:
    """End a command with the CLI's one error line (`error: ...` on stderr) and exit code `code`."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


__all__ = ["DATA_DIR", "DEVICE", "LABEL_COLUMN", "MODEL", "RUN_DIR", "TEXT_COLUMN", "fail", "quiet_libraries"]
