"""The `headprune` application: every command is registered here, by name, in the README's order.

Command modules (`compute`, `results`) define plain functions and never see the app, so importing
one registers nothing and nothing imports back from here. User mistakes print one line and exit 2."""

from __future__ import annotations

import sys

import typer

from ..errors import HeadpruneError, Stopped
from .compute import datasets_command, importance_command, profiles_command, run_command, score_command
from .options import quiet_libraries
from .results import (
    export_command,
    finetune_command,
    predict_command,
    replay_command,
    report_command,
    verify_command,
)


def _root() -> None:
    """headprune: prune attention heads before finetuning (Moura 2023), with proof."""


def build_app() -> typer.Typer:
    """The typer app with every command: one place lists what `headprune` offers."""
    app = typer.Typer(
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        help="Find which attention heads of a pretrained encoder can be pruned before finetuning, and prove it.",
    )
    app.callback()(_root)
    app.command("datasets")(datasets_command)
    app.command("importance")(importance_command)
    app.command("score")(score_command)
    app.command("run")(run_command)
    app.command("profiles")(profiles_command)
    app.command("report")(report_command)
    app.command("verify")(verify_command)
    app.command("replay")(replay_command)
    app.command("export")(export_command)
    app.command("finetune")(finetune_command)
    app.command("predict")(predict_command)
    return app


app = build_app()


def main() -> None:
    """The `headprune` entry point: library errors become one line and an exit code, never a traceback."""
    quiet_libraries()
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


__all__ = ["app", "build_app", "main"]
