"""User-facing errors: one clear line, no traceback (the CLI prints `str(error)` and exits 2)."""

from __future__ import annotations


class HeadpruneError(Exception):
    """A mistake in the user's input (file, column, option, configuration)."""

    exit_code = 2
