"""The scorer: every evaluation through the results store first, an executor for the rest.

`run_stored` is the one loop for every kind of task (Step 2's and the generalization's SeedTasks,
Step 1's finetunings): look each task up, hand only the missing ones to the executor, write each
result the moment it arrives, stop starting work past the deadline. `Scorer` applies it to
PRUN_ADJ_EVAL scores and is the batch evaluator of the searches."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .base import BaseModel
from .data import Dataset, check_enough_per_class, load_dataset
from .devices import device_description, resolve_device
from .errors import Stopped, past
from .executors.local import InProcessExecutor
from .heads import Head, HeadSet
from .scoring import encode, run_task, time_task
from .settings import ScoreSettings
from .store import ResultStore
from .tasks import EvalContext, Executor, SeedScore, SeedTask, describe_scores


def run_stored(
    tasks: Sequence[Hashable],
    lookup: Callable[[Hashable], object | None],
    put: Callable[[Hashable, object], None],
    executor: Executor,
    make_context: Callable[[list], object],
    deadline: float | None = None,
    on_result: Callable[[Hashable, object, bool], None] | None = None,
    stopped: Callable[[int, int], str] | None = None,
) -> dict:
    """Results of every task (duplicates once): stored ones from `lookup`, the missing ones from
    `executor` (each `put` the moment it arrives). `on_result(task, result, from_store)` for each.

    An executor that `plans_batch` is handed the whole batch, stored tasks included (which tasks
    train together decides their scores; a resumed run must train the groups an uninterrupted one
    would). Past `deadline` (`time.monotonic()`) nothing new starts: the executor is asked to stop
    after what is in flight and `errors.Stopped` is raised, every finished result being stored;
    `stopped(done, total)` words its message."""

    def stop() -> Stopped:
        done, total = len(results), len(batch)
        return Stopped(stopped(done, total) if stopped else
                       f"time limit reached; {done} of {total} results of this batch are in the store")

    batch = list(dict.fromkeys(tasks))
    results: dict = {}
    missing = []
    for task in batch:
        stored = lookup(task)
        if stored is None:
            missing.append(task)
            continue
        results[task] = stored
        if on_result:
            on_result(task, stored, True)
    if not missing:
        return results
    if past(deadline):
        raise stop()
    executor.clear_stop()
    context = make_context(batch)
    for task, result in executor.run(context, missing, batch=batch if executor.plans_batch else None):
        put(task, result)
        results[task] = result
        if on_result:
            on_result(task, result, False)
        if past(deadline):
            executor.request_stop()  # finish what is in flight, then stop
    if len(results) < len(batch):
        raise stop()
    return results


@dataclass
class ScoreResult:
    """The scores of one pruned model on one dataset, one per seed."""

    dataset: str
    pruned: list[Head]
    seeds: list[int]
    scores: list[float]
    adjust_seconds: list[float]
    n_params: int
    size_bytes: int

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std(self) -> float:
        return float(np.std(self.scores, ddof=1)) if len(self.scores) > 1 else 0.0



class Scorer:
    """Scores pruned models through the results store; only missing per-seed scores are computed.

    `evaluate(requests)` is the batch evaluator of the search layer: [(pruned set, dataset)] ->
    mean F1 over `seeds`."""

    def __init__(
        self,
        base: BaseModel,
        store: ResultStore,
        settings: ScoreSettings = ScoreSettings(),
        seeds: Sequence[int] = (1,),
        device: str = "auto",
        executor=None,
        on_result: Callable[[SeedTask, SeedScore, bool], None] | None = None,
        datasets: Callable[[str], Dataset] = load_dataset,
        deadline: float | None = None,
        log: Callable[[str], None] | None = None,
        base_loader: Callable[[], BaseModel] | None = None,
        precision: str = "fp32",
        score: Callable[[EvalContext, SeedTask], SeedScore] = run_task,
    ):
        self.base = base
        self.store = store
        self.settings = settings
        self.seeds = list(seeds)
        self.device = device
        self.executor: Executor = executor or InProcessExecutor()
        self.on_result = on_result
        self.loader = datasets  # name -> Dataset (a run's `workspace.Workspace.dataset`: one place loads them)
        self.deadline = deadline  # time.monotonic(): past it, start nothing new and raise errors.Stopped
        self.log = log  # where the first score found in the store says which scores a resumed run reuses
        self.base_loader = base_loader  # loads `base` again, in worker processes (`EvalContext.base_loader`)
        self.precision = precision  # the reference loop's adjusting precision (`scoring.adjust`)
        self.score_task = score  # one SeedTask by the reference loop (`EvalContext.score`), module-level: it travels
        self.resumed = False
        self._datasets: dict[str, Dataset] = {}
        self._encoded: dict[str, tuple[list[list[int]], np.ndarray]] = {}
        self.settings_key = {**settings.as_dict(), "max_length": min(settings.max_length, base.max_length)}
        # The batched engine's scores (other dropout masks, bf16 on CUDA: equal only statistically) are
        # kept apart from the reference loop's, whose keys stay as they were (no entries of its own).
        self.store_entries = self.executor.store_entries(base.model, device)
        if precision != "fp32" and not self.store_entries:  # bf16 reference scores: keys of their own
            self.store_entries = {"precision": precision}
        self.settings_key.update(self.store_entries)

    # -------------------------------------------------------------- data
    def dataset(self, name: str) -> Dataset:
        if name not in self._datasets:
            ds = self.loader(name)
            check_enough_per_class(ds, self.settings.n_folds)
            self._datasets[name] = ds
            self._encoded[name] = (encode(self.base.tokenizer, ds.texts, self.settings_key["max_length"]), ds.labels)
        return self._datasets[name]

    def context(self, names: Iterable[str]) -> EvalContext:
        for name in names:
            self.dataset(name)
        return EvalContext(self.base.model, self.base.tokenizer, {n: self._encoded[n] for n in names}, self.settings,
                           self.device, score=self.score_task, base_loader=self.base_loader, precision=self.precision)

    # -------------------------------------------------------------- store
    def key(self, task: SeedTask) -> str:
        return self.store.score_key(
            self.base.fingerprint, task.pruned, self.dataset(task.dataset).content_hash, task.seed, self.settings_key
        )

    def lookup(self, task: SeedTask) -> SeedScore | None:
        return self.store.get_score(self.key(task))

    def describe(self) -> str:
        """Which scores this scorer stores and reuses, in one line (`tasks.describe_scores`)."""
        return describe_scores(self.store_entries)

    def _lookup_saying(self, task: SeedTask) -> SeedScore | None:
        """`lookup`, saying once (`log`) which scores a resumed run found in its store."""
        stored = self.lookup(task)
        if stored is not None and not self.resumed:
            self.resumed = True
            if self.log:
                self.log(f"resuming from the store: {self.describe()}")
        return stored

    def tasks_for(
        self, requests: Sequence[tuple[Iterable[Head], str]], seeds: Sequence[int] | None = None
    ) -> list[SeedTask]:
        seeds = self.seeds if seeds is None else list(seeds)
        out: list[SeedTask] = []
        for pruned, name in requests:
            canonical = HeadSet(pruned).ordered()
            out += [SeedTask(canonical, name, s) for s in seeds]
        return out

    def run(self, tasks: Sequence[SeedTask]) -> dict[SeedTask, SeedScore]:
        """Stored scores for every task, computing (and storing at once) only the missing ones."""

        def put(task: SeedTask, score: SeedScore) -> None:
            self.store.put_score(
                self.key(task),
                model=self.base.fingerprint,
                pruned=task.pruned,
                dataset=task.dataset,
                dataset_hash=self.dataset(task.dataset).content_hash,
                seed=task.seed,
                settings=self.settings_key,
                score=score,
            )

        return run_stored(tasks, self._lookup_saying, put, self.executor,
                          lambda batch: self.context(sorted({t.dataset for t in batch})),
                          deadline=self.deadline, on_result=self.on_result,
                          stopped=lambda done, total: f"time limit reached; {done} of {total} scores of this batch "
                                                      "are in the store")

    def adjust_times(self, tasks: Sequence[SeedTask], executor: Executor | None = None) -> dict[SeedTask, float]:
        """Table 14: the adjusting seconds of each task's model trained alone, physically pruned, by
        the reference loop on this scorer's device, whatever executor computes the scores (the
        batched engine's times are a stack's, shared by its models), in this process unless
        `executor` says otherwise. Stored by device, so a resumed run times nothing twice."""
        device = resolve_device(str(self.device))
        where = device_description(device)
        # The reference loop times every model, whatever engine computed the scores: its key is the
        # score settings alone (with the device), not the engine's entries.
        settings = {k: v for k, v in self.settings_key.items() if k not in self.store_entries}
        if self.precision != "fp32":  # it times at this scorer's precision (`scoring.adjust`)
            settings["precision"] = self.precision

        def key(task: SeedTask) -> str:
            return self.store.timing_key(self.base.fingerprint, task.pruned, self.dataset(task.dataset).content_hash,
                                         task.seed, settings, where)

        def put(task: SeedTask, seconds: float) -> None:
            self.store.put_timing(key(task), model=self.base.fingerprint, pruned=task.pruned, dataset=task.dataset,
                                  dataset_hash=self.dataset(task.dataset).content_hash, seed=task.seed,
                                  settings=settings, device=where, seconds=seconds)

        def context(batch: list) -> EvalContext:
            return replace(self.context(sorted({t.dataset for t in batch})), device=device, score=time_task)

        return run_stored(tasks, lambda task: self.store.get_timing(key(task)), put, executor or InProcessExecutor(),
                          context,
                          deadline=self.deadline, on_result=self.on_result,
                          stopped=lambda done, total: f"time limit reached; {done} of {total} adjusting times "
                                                      "(Table 14) are in the store")

    def score(self, pruned: Iterable[Head], dataset: str, seeds: Sequence[int] | None = None) -> ScoreResult:
        tasks = self.tasks_for([(pruned, dataset)], seeds)
        results = self.run(tasks)
        scores = [results[t] for t in tasks]
        return ScoreResult(
            dataset=dataset,
            pruned=list(tasks[0].pruned),
            seeds=[t.seed for t in tasks],
            scores=[s.f1 for s in scores],
            adjust_seconds=[s.adjust_seconds for s in scores],
            n_params=scores[0].n_params,
            size_bytes=scores[0].size_bytes,
        )

    def evaluate_seeds(self, requests: Sequence[tuple]) -> list[float]:
        """The batch evaluator of a race (`racing.Race`): [(pruned set, dataset, seed)] (or
        `racing.SeedRequest`s at this scorer's fidelity) -> that seed's F1."""
        if any(len(r) > 3 and r[3] for r in requests):
            raise ValueError("a low-fidelity request reached the full-fidelity scorer (use racing.by_fidelity)")
        tasks = [SeedTask(HeadSet(request[0]).ordered(), request[1], int(request[2]))
                 for request in requests]
        results = self.run(tasks)
        return [float(results[t].f1) for t in tasks]

    def evaluate(self, requests: Sequence[tuple[Iterable[Head], str]]) -> list[float]:
        tasks = self.tasks_for(requests)
        results = self.run(tasks)
        n = len(self.seeds)
        return [float(np.mean([results[t].f1 for t in tasks[i * n : (i + 1) * n]])) for i in range(len(requests))]


__all__ = ["ScoreResult", "Scorer", "run_stored"]
