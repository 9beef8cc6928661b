"""The command line (`headprune`, `python -m headprune.cli`): a thin typer layer over the library.

`app` lists the commands (`app.py` registers each one explicitly); `main` runs them."""

from __future__ import annotations

from .app import app, main

__all__ = ["app", "main"]
