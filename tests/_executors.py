"""Executors that watch the real ones, injected where a test must know what was computed (instead of
replacing module functions): `Counting` counts the tasks handed to it, `Refusing` fails the test if
any task reaches it (everything must come from the store)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from headprune.executors.local import InProcessExecutor
from headprune.tasks import Executor


class Watching:
    """An executor that delegates to `inner` (declared capabilities included)."""

    def __init__(self, inner: Executor | None = None):
        self.inner = inner or InProcessExecutor()
        self.name = self.inner.name
        self.store_tag = self.inner.store_tag
        self.plans_batch = self.inner.plans_batch

    def store_entries(self, model: Any, device: Any) -> dict[str, Any]:
        return self.inner.store_entries(model, device)

    def run(self, context: Any, tasks: Sequence[Any], batch: Sequence[Any] | None = None
            ) -> Iterator[tuple[Any, Any]]:
        return self.inner.run(context, tasks, batch)

    def request_stop(self) -> None:
        self.inner.request_stop()

    def clear_stop(self) -> None:
        self.inner.clear_stop()

    def close(self) -> None:
        self.inner.close()


class Counting(Watching):
    """Counts the tasks it computes (`tasks`, in the order handed over)."""

    def __init__(self, inner: Executor | None = None):
        super().__init__(inner)
        self.tasks: list = []

    def run(self, context: Any, tasks: Sequence[Any], batch: Sequence[Any] | None = None
            ) -> Iterator[tuple[Any, Any]]:
        self.tasks += list(tasks)
        return self.inner.run(context, tasks, batch)


class Refusing(Watching):
    """Fails as soon as it is asked to compute anything."""

    def run(self, context: Any, tasks: Sequence[Any], batch: Sequence[Any] | None = None
            ) -> Iterator[tuple[Any, Any]]:
        raise AssertionError(f"a stored evaluation was recomputed ({len(tasks)} tasks, e.g. {list(tasks)[:1]})")


def refusing_executors(config: Any, stage: str) -> Refusing:
    """A `workspace.Workspace(executors=...)` factory whose executors compute nothing."""
    from headprune.executors import make_executor

    return Refusing(make_executor(config, stage))
