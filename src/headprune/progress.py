"""Progress for long work: the stage, evaluations done/total (and how many came from the store), time left."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class RunProgress:
    """One bar per stage. Time left = (remaining work) x (seconds per unit of work of the computed
    evaluations), so evaluations answered by the store do not make the estimate optimistic. Work is
    one unit per evaluation unless the stage gives weights (e.g. Step 1: rows finetuned), so that a
    stage whose first evaluations are small does not promise too early an end. Without a terminal
    (CI, `nohup`, a log file) it prints one plain line every `every` seconds and at the end of each
    stage: each a whole line, never wrapped at the console's width, so a log can be read and grepped.
    The live bar needs the stream itself to be a terminal: FORCE_COLOR or TTY_COMPATIBLE make rich
    call a log file a terminal, and a live bar there is cursor movements in a file."""

    def __init__(self, console: Console | None = None, enabled: bool = True, every: float = 20.0):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.live = enabled and self.console.is_terminal and _is_tty(self.console.file)
        self.every = every
        self._progress: Progress | None = None
        self._task = None
        self.stage_name = ""
        self.total = 0
        self.done = 0
        self.cached = 0
        self._computed_seconds: list[float] = []
        self.total_work = 0.0
        self.done_work = 0.0
        self._computed_work = 0.0
        self._last = time.perf_counter()
        self._last_print = 0.0

    def log(self, message: str) -> None:
        if self.enabled:
            self._line(message)

    def _line(self, text: str) -> None:
        """`text` as one line, however narrow the console (rich would wrap it at the width otherwise)."""
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def start_stage(self, name: str, total: int, total_work: float | None = None) -> None:
        """`total_work`: the stage's work in the units `advance(work=...)` counts (default: evaluations)."""
        self.end_stage()
        self.stage_name, self.total, self.done, self.cached = name, total, 0, 0
        self._computed_seconds = []
        self.total_work = float(total if total_work is None else total_work)
        self.done_work = self._computed_work = 0.0
        self._last = time.perf_counter()
        self._last_print = time.perf_counter()
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.fields[stage]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("", total=total, stage=name, detail="")
        elif self.enabled:
            self._line(f"[{name}] {total} evaluations")

    def set_total(self, total: int) -> None:
        """A new number of evaluations for the stage (its work scales with it)."""
        self.total_work = self.total_work * total / self.total if self.total else float(total)
        self.total = total
        if self._progress is not None:
            self._progress.update(self._task, total=total)

    def time_left(self) -> float | None:
        if not self._computed_seconds or self._computed_work <= 0:
            return None
        return max(0.0, self.total_work - self.done_work) * (sum(self._computed_seconds) / self._computed_work)

    def advance(self, cached: bool = False, work: float = 1.0) -> None:
        now = time.perf_counter()
        self.done += 1
        self.done_work += work
        if cached:
            self.cached += 1
        else:
            self._computed_seconds.append(now - self._last)
            self._computed_work += work
        self._last = now
        left = self.time_left()
        detail = f"{self.cached} from store" + (f", ~{format_seconds(left)} left" if left is not None else "")
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done, detail=detail)
        elif self.enabled and now - self._last_print >= self.every:
            self._last_print = now
            self._line(f"[{self.stage_name}] {self.done}/{self.total} evaluations, {detail}")

    def end_stage(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        elif self.enabled and self.stage_name:
            self._line(f"[{self.stage_name}] done: {self.done} evaluations, {self.cached} from store")
        self.stage_name = ""

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.end_stage()


def _is_tty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()
