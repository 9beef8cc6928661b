"""User-facing errors: one clear line, no traceback (the CLI prints `str(error)` and exits 2)."""

from __future__ import annotations


class HeadpruneError(Exception):
    """A mistake in the user's input (file, column, option, configuration)."""

    exit_code = 2


class Stopped(Exception):
    """The run stopped on purpose (its time limit) with work left: what is done is in the store and
    the same command resumes. The CLI prints the message and exits 3."""

    exit_code = 3


def past(deadline: float | None) -> bool:
    """Whether a `time.monotonic()` deadline (None: none) has passed."""
    import time

    return deadline is not None and time.monotonic() >= deadline
