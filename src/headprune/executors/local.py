"""Executors on this machine: `InProcessExecutor` (one task after another, here) and
`ProcessExecutor` (tasks spread over worker processes that build their context themselves)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from ..errors import HeadpruneError
from ..tasks import Context, StopRequests


class ReferenceLoop(StopRequests):
    """What the executors computing `context.compute(task)` declare: their scores are the reference
    loop's (no `store_tag`, no entries of their own in store keys) and do not depend on the batch."""

    store_tag = None
    plans_batch = False

    def store_entries(self, model: Any, device: Any) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


class InProcessExecutor(ReferenceLoop):
    """Runs each task here, in order, by `context.compute(task)`; results are yielded (and stored by
    the caller) one by one. Its scores are the reference loop's."""

    name = "in-process"

    def run(self, context: Context, tasks: Sequence[Any], batch: Sequence[Any] | None = None
            ) -> Iterator[tuple[Any, Any]]:
        for task in tasks:
            if self.stop_requested:
                return
            yield task, context.compute(task)


class Rebuildable(Protocol):
    """A context that worker processes can build themselves: `recipe()` is a picklable callable
    (e.g. a `functools.partial` of a module-level function) that returns an equivalent context, so
    that the model is loaded in each worker rather than pickled to it."""

    def compute(self, task: Any) -> Any: ...

    def recipe(self) -> Callable[[], Context]: ...


# Worker-process state (set by `_init` in each worker of a ProcessExecutor, never in the parent).
_WORKER_CONTEXT: dict = {}


def _init(recipe: Callable[[], Context], threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER_CONTEXT["context"] = recipe()


def _compute(task: Any) -> Any:
    return _WORKER_CONTEXT["context"].compute(task)


class ProcessExecutor(ReferenceLoop):
    """Runs tasks in `workers` spawned processes (one small finetuning cannot fill a GPU; several
    can). Each worker builds the context from its `recipe()` once and computes exactly what
    `InProcessExecutor` computes; results are yielded as they complete. After `request_stop()` the
    tasks not started are cancelled and the ones running finish."""

    name = "processes"

    def __init__(self, workers: int):
        if workers < 1:
            raise HeadpruneError(f"a process executor needs at least one worker, got {workers}")
        self.workers = int(workers)

    def run(self, context: Rebuildable, tasks: Sequence[Any], batch: Sequence[Any] | None = None
            ) -> Iterator[tuple[Any, Any]]:
        import multiprocessing
        import os
        from concurrent.futures import CancelledError, ProcessPoolExecutor, as_completed

        tasks = list(tasks)
        if not tasks:
            return
        workers = min(self.workers, len(tasks))
        threads = max(1, (os.cpu_count() or 1) // workers)
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=spawn, initializer=_init,
                                 initargs=(context.recipe(), threads)) as pool:
            futures = {pool.submit(_compute, task): task for task in tasks}
            try:
                for future in as_completed(futures):
                    try:
                        result = future.result()
                    except CancelledError:
                        continue
                    yield futures[future], result
                    if self.stop_requested:
                        for other in futures:
                            other.cancel()
            finally:
                for other in futures:  # the caller stopped early (error, interrupt): start nothing more
                    other.cancel()


__all__ = ["InProcessExecutor", "ProcessExecutor", "Rebuildable", "ReferenceLoop"]
