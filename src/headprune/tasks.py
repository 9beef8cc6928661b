"""The contract between whoever asks for evaluations and whoever runs them.

A *task* is one unit of work named by what determines it (hashable, so the store and the executors
can key by it): `SeedTask`, one seed of PRUN_ADJ_EVAL for a pruned set on a dataset (Step 2 and the
generalization check), or `ImportanceTask`, one Step 1 finetuning of a dataset with a seed. A
*context* holds what every task of a batch needs (the base model, tokenized datasets, settings) and
computes one task: `context.compute(task)`. An *executor* runs a batch of tasks of one context and
yields `(task, result)` pairs as they complete; it never touches the results store (the caller
writes every result the moment it arrives, `scorer.run_stored`), so resuming after an interruption
works the same for every executor.

The executor's capabilities are declared attributes (`Executor`), never guessed:
- `store_tag`: None when its scores equal the reference loop's; otherwise the engine's name, the
  `engine` entry of their store keys;
- `store_entries(model, device)`: the entries its scores' store keys carry beyond the score
  settings: {} for the reference loop (whose keys stay as they were); for the batched engine its
  name, the precision, how dropout streams are drawn and the pack size (`engine.batched_store_entries`),
  so that scores computed otherwise are kept apart; `describe_scores` words them in one line;
- `plans_batch`: whether which tasks train together (hence their scores) depends on the whole batch
  they belong to; such an executor is handed the whole batch, stored tasks included, so that a
  resumed run trains the groups an uninterrupted one would;
- stop requests (`StopRequests`): `request_stop()` makes it finish what is in flight and start
  nothing new (the caller's time limit); `clear_stop()` before a new batch.

This module imports nothing of headprune's but the settings and `heads`: every other module may depend on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .heads import Head
from .settings import ScoreSettings


@dataclass(frozen=True)
class SeedTask:
    """One evaluation: a pruned set (sorted (layer, head) pairs) on a dataset with a seed."""

    pruned: tuple[Head, ...]
    dataset: str
    seed: int


@dataclass(frozen=True)
class SeedScore:
    """One seed's result of PRUN_ADJ_EVAL."""

    f1: float
    adjust_seconds: float
    n_params: int
    size_bytes: int
    device: str = "cpu"


@dataclass(frozen=True)
class ImportanceTask:
    """One Step 1 finetuning (Algorithm 1): a dataset (by name in its context) with a seed."""

    dataset: str
    seed: int


class Context(Protocol):
    """What an executor needs to compute any task of one batch."""

    def compute(self, task: Any) -> Any: ...


@dataclass
class EvalContext:
    """What a worker needs to run SeedTasks: the base model, the tokenized datasets ({name: (token
    ids, labels)}), the settings, the device, and `score`, the function computing one task (the
    reference `scoring.run_task` unless a caller says otherwise; a module-level function, so that
    the context can travel to worker processes)."""

    base_model: Any
    tokenizer: Any
    datasets: dict[str, tuple[list[list[int]], np.ndarray]]
    settings: ScoreSettings
    device: Any = "auto"
    score: Callable[[EvalContext, SeedTask], SeedScore] | None = None
    # A picklable callable loading the same base model (a `base.BaseModel`): worker processes load it
    # themselves rather than be sent the model (`executors.WorkerProcesses`). None: not offered.
    base_loader: Callable[[], Any] | None = None
    precision: str = "fp32"  # the reference loop's adjusting: "fp32", or "bf16" autocast (`scoring.adjust`)

    def compute(self, task: SeedTask) -> SeedScore:
        if self.score is None:
            raise RuntimeError("this EvalContext has no `score` function")
        return self.score(self, task)


class StopRequests:
    """`request_stop()`: finish what is in flight, start nothing new (the caller's time limit)."""

    stop_requested = False

    def request_stop(self) -> None:
        self.stop_requested = True

    def clear_stop(self) -> None:
        self.stop_requested = False


@runtime_checkable
class Executor(Protocol):
    """Runs the tasks of one context; see the module docstring for the declared capabilities."""

    name: str
    store_tag: str | None
    plans_batch: bool

    def store_entries(self, model: Any, device: Any) -> dict[str, Any]: ...

    def run(self, context: Any, tasks: Sequence[Any], batch: Sequence[Any] | None = None
            ) -> Iterator[tuple[Any, Any]]:
        """`(task, result)` for every task of `tasks`, as they complete. `batch`: the whole request
        `tasks` belong to, stored tasks included (only an executor with `plans_batch` looks at it)."""
        ...

    def request_stop(self) -> None: ...

    def clear_stop(self) -> None: ...

    def close(self) -> None: ...


def describe_scores(entries: Mapping[str, Any]) -> str:
    """Where scores stored under these key entries (an executor's `store_entries`) come from, in one
    line, e.g. "scores: batched engine (bf16, packs of 118, ...)": a run resuming from its store says
    which scores it found, and those of the batched engine are the reference loop's only statistically."""
    if not entries.get("engine"):
        return "scores: reference loop" + (" (bf16 autocast)" if entries.get("precision") == "bf16" else "")
    if "pack_models" in entries:
        stacks = f"packs of {entries['pack_models']}, step ratio {entries.get('pack_step_ratio')}"
    else:
        stacks = "one candidate's seeds per stack" + (f", at most {entries['max_models']}"
                                                       if entries.get("max_models") else "")
    parts = [str(entries.get("precision")), stacks, f"dropout per stack: {entries.get('dropout')}"]
    return f"scores: batched engine ({', '.join(parts)}): equal to the reference loop's statistically"


__all__ = ["Context", "EvalContext", "Executor", "ImportanceTask", "SeedScore", "SeedTask", "StopRequests",
           "describe_scores"]
