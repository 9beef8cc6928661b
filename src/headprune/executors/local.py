"""Executors on this machine: `InProcessExecutor` (one task after another, here),
`ProcessExecutor` (tasks spread over worker processes that build their context themselves) and
`WorkerProcesses` (the reference loop's evaluations in long-lived worker processes of one thread
each: on a CPU two 1-thread processes do more than one 2-thread process)."""

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


def as_they_complete(futures: dict, stops: StopRequests) -> Iterator[tuple[Any, Any]]:
    """(task, result) of each future of {future: task} as it completes; after `stops.request_stop()`,
    or when the caller stops early (an error, an interrupt), the futures not started are cancelled."""
    from concurrent.futures import CancelledError, as_completed

    try:
        for future in as_completed(futures):
            try:
                result = future.result()
            except CancelledError:
                continue
            yield futures[future], result
            if stops.stop_requested:
                for other in futures:
                    other.cancel()
    finally:
        for other in futures:  # start nothing more
            other.cancel()


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
        from concurrent.futures import ProcessPoolExecutor

        tasks = list(tasks)
        if not tasks:
            return
        workers = min(self.workers, len(tasks))
        threads = max(1, (os.cpu_count() or 1) // workers)
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=spawn, initializer=_init,
                                 initargs=(context.recipe(), threads)) as pool:
            yield from as_they_complete({pool.submit(_compute, task): task for task in tasks}, self)


# Worker-process state of `WorkerProcesses` (set by `_load_base` in each of its workers).
_WORKER_BASE: dict = {}


def _load_base(loader: Callable[[], Any], threads: int) -> None:
    import multiprocessing

    import torch

    # DataCollatorForLanguageModeling(seed=...) refuses to run outside a process named MainProcess
    # (it expects DataLoader workers); each task here draws its own seeded stream, as in the parent.
    multiprocessing.current_process().name = "MainProcess"
    torch.set_num_threads(threads)
    _WORKER_BASE["base"] = loader()


def _evaluate(task: Any, dataset: Any, settings: Any, device: Any, score: Callable, precision: str) -> Any:
    from ..tasks import EvalContext

    base = _WORKER_BASE["base"]
    return score(EvalContext(base.model, base.tokenizer, {task.dataset: dataset}, settings, device, score,
                             precision=precision), task)


def _travels(function: Callable) -> bool:
    """Whether `function` can be sent to a worker process (a module-level function can; one defined
    inside another, such as a test's stand-in, cannot: its tasks run here)."""
    import pickle

    try:
        pickle.dumps(function)
    except (pickle.PicklingError, AttributeError, TypeError):
        return False
    return True


def auto_workers(n_params: int, cores: int | None = None, memory: int | None = None) -> int:
    """Worker processes for the reference loop on a CPU: one per core, as many as half the memory
    holds (one process trains a copy of the model: weights, gradients and Adam state, about 6 x 4
    bytes a parameter, and holds the base model and torch, about 1 GiB)."""
    import os

    cores = cores or os.cpu_count() or 1
    if memory is None:
        try:
            memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # not known here: the cores decide
            memory = 0
    per_worker = 24 * n_params + 2**30
    fits = memory // 2 // per_worker if memory else cores
    return max(1, min(cores, fits))


class WorkerProcesses(ReferenceLoop):
    """The reference loop's SeedTasks in `workers` spawned processes (0: `auto_workers`) of `threads`
    torch threads each (default: the cores shared out, so 1 each with one worker per core). The
    workers live as long as the executor (`close()`), each loading the base model once from the
    context's `base_loader`;
    every task travels with its dataset's token ids. A task computes in a worker exactly what it
    computes in this process with as many threads (`EvalContext.score` seeds everything from the
    task's seed), so its scores are the reference loop's, under the same store keys; results come
    as they complete. After `request_stop()` the tasks not started are cancelled. A context without
    a `base_loader` or whose `score` cannot be pickled, or a batch of one task when no pool is up
    yet, runs here on `threads` threads."""

    name = "worker-processes"

    def __init__(self, workers: int = 0, threads: int | None = None):
        if workers < 0:
            raise HeadpruneError(f"run.workers must be 0 (automatic) or more, got {workers}")
        self.requested = int(workers)  # 0: `auto_workers` of the first context's model
        self.requested_threads = threads
        self._pool = None
        self._loader_key: bytes | None = None

    def resolved(self, model: Any) -> tuple[int, int]:
        """(worker processes, torch threads of each) for `model`."""
        import os

        from ..models import count_parameters

        workers = self.requested or auto_workers(count_parameters(model))
        return workers, int(self.requested_threads or max(1, (os.cpu_count() or 1) // workers))

    def _pool_for(self, loader: Callable[[], Any], workers: int, threads: int):
        import multiprocessing
        import pickle
        from concurrent.futures import ProcessPoolExecutor

        key = pickle.dumps((loader, workers, threads))
        if self._pool is None or key != self._loader_key:
            self.close()
            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_load_base, initargs=(loader, threads))
            self._loader_key = key
        return self._pool

    def run(self, context: Any, tasks: Sequence[Any], batch: Sequence[Any] | None = None
            ) -> Iterator[tuple[Any, Any]]:
        tasks = list(tasks)
        workers, threads = self.resolved(context.base_model)
        loader = getattr(context, "base_loader", None)
        if (loader is None or workers == 1 or (len(tasks) < 2 and self._pool is None)
                or not _travels(context.score)):
            yield from self._here(context, tasks, threads)
            return
        pool = self._pool_for(loader, workers, threads)
        yield from as_they_complete({pool.submit(_evaluate, task, context.datasets[task.dataset], context.settings,
                                                 context.device, context.score, context.precision): task
                                     for task in tasks}, self)

    def _here(self, context: Any, tasks: list, threads: int) -> Iterator[tuple[Any, Any]]:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for task in tasks:
                if self.stop_requested:
                    return
                yield task, context.compute(task)
        finally:
            torch.set_num_threads(before)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._loader_key = None


__all__ = ["InProcessExecutor", "ProcessExecutor", "Rebuildable", "ReferenceLoop", "WorkerProcesses", "auto_workers"]
