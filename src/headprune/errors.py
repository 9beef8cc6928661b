"""User-facing errors: one clear line, no traceback (the CLI prints `str(error)` and exits 2)."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any


class HeadpruneError(Exception):
    """A mistake in the user's input (file, column, option, configuration)."""

    exit_code = 2


class Stopped(Exception):
    """The run stopped on purpose (its time limit) with work left: what is done is in the store and
    the same command resumes. The CLI prints the message and exits 3."""

    exit_code = 3


def parse_user_file(path: str | Path, parse: Callable[[str], Any], where: str) -> Any:
    """A user's text file, read as UTF-8 and parsed by `parse` (`json.loads`, `tomllib.loads`). Not
    UTF-8, or not valid JSON / TOML, is one `HeadpruneError` line starting with `where` (the file,
    or the option and file); errors of what `parse` builds past the syntax pass through."""
    try:
        return parse(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise HeadpruneError(f"{where}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    except tomllib.TOMLDecodeError as err:
        raise HeadpruneError(f"{where}: invalid TOML ({err})") from None
    except UnicodeDecodeError:
        raise HeadpruneError(f"{where}: not UTF-8 text") from None


def past(deadline: float | None) -> bool:
    """Whether a `time.monotonic()` deadline (None: none) has passed."""
    import time

    return deadline is not None and time.monotonic() >= deadline
