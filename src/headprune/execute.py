"""Where evaluations run. `InProcessExecutor` runs them one after another in this process."""

from __future__ import annotations

from typing import Iterator, Sequence

from .scoring import EvalContext, SeedTask, run_task
from .store import SeedScore


class InProcessExecutor:
    """Runs each task here, in order; results are yielded (and stored by the caller) one by one."""

    name = "in-process"

    def run(self, context: EvalContext, tasks: Sequence[SeedTask]) -> Iterator[tuple[SeedTask, SeedScore]]:
        for task in tasks:
            yield task, run_task(context, task)
