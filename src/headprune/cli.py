"""Thin command-line layer over the library. User mistakes print one line and exit 2."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import typer

from .errors import HeadpruneError, Stopped

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Find which attention heads of a pretrained encoder can be pruned before finetuning, and prove it.",
)

# Options shared by commands (typer re-uses these objects).
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
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def main() -> None:
    quiet_libraries()
    from . import cli_core, cli_results  # noqa: F401  (they register their commands on `app`)

    try:
        app()
    except HeadpruneError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except Stopped as stop:
        typer.echo(f"stopped: {stop}; run the same command again to go on", err=True)
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted: every finished evaluation is in the store; rerun the same command to resume", err=True)
        sys.exit(130)


@app.callback()
def _root() -> None:
    """headprune: prune attention heads before finetuning (Moura 2023), with proof."""
