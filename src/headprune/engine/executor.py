"""`BatchedExecutor`: the executor interface over the batched engine."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from ..devices import resolve_device
from ..tasks import EvalContext, SeedScore, SeedTask, StopRequests
from .batches import BatchPreparer
from .options import EngineOptions, batched_store_entries, supports
from .packing import auto_pack_size, plan_units
from .stages import ENGINE, EngineStages, SizeCache, Trained, task_jobs


class BatchedExecutor(StopRequests):
    """The `tasks.Executor` protocol over the batched engine: `run(context, tasks, batch)` yields
    (task, SeedScore).

    Without packing, tasks are grouped by (pruned set, dataset) and each group's seeds are trained
    together (`score_seeds_batched`), physically pruned: each `adjust_seconds` is the wall time of
    one candidate's seeds, comparable between candidates. With `options.pack`, tasks of different
    pruned sets and datasets of similar length are trained together in masked stacks of up to
    `options.pack_models` models (`score_pack`): far larger batches for the GPU, the same scores
    (statistically: dropout streams depend on the pack), but `adjust_seconds` is then a pack's
    shared time. The SVMs run in background threads while the next stack trains. Models the engine
    does not support go through the context's own (reference) computation.

    Its units are planned over the whole batch (`plans_batch`): which seeds and candidates train
    together decides their dropout streams, hence their scores. `stages`: the engine's stages
    (`stages.EngineStages`, the real ones unless a caller watches or replaces one)."""

    name = "batched"
    plans_batch = True

    def __init__(self, options: EngineOptions = EngineOptions(), stages: EngineStages = ENGINE):
        self.options = options
        self.stages = stages
        self._sizes: SizeCache | None = None
        self._prep: BatchPreparer | None = None
        self._fits: int | None = None  # models per pack known to fit (after running out of GPU memory)

    @property
    def store_tag(self) -> str:
        """The engine's name, the `engine` entry of its scores' store keys (`store_entries`)."""
        return "batched-packed" if self.options.pack else "batched"

    def store_entries(self, model, device) -> dict[str, Any]:
        """What its scores' store keys carry beyond the score settings (`engine.batched_store_entries`):
        the precision used on `device`, the dropout streams and the pack size, so that scores drawn
        otherwise are kept apart; {} for a model it scores with the reference loop."""
        device = _resolved(device)
        if not supports(model):
            return {}  # `run` scores it with the reference loop
        return batched_store_entries(self.options, model, device, self.pack_size(model, device))

    def pack_size(self, model, device: torch.device) -> int:
        """Models per pack (0 without packing): `options.pack_models`, else what fits on `device`
        (from its total memory, so the same device always gives the same packs)."""
        if not self.options.pack:
            return 0
        return self.options.pack_models or auto_pack_size(model, device)

    def sizes(self, base_model) -> SizeCache:
        if self._sizes is None or self._sizes.base_model is not base_model:
            self._sizes = SizeCache(base_model)
        return self._sizes

    def run(self, context: EvalContext, tasks: Sequence[SeedTask], batch: Sequence[SeedTask] | None = None
            ) -> Iterator[tuple[SeedTask, SeedScore]]:
        """Scores of `tasks`. `batch`: the whole request they belong to, stored tasks included (see
        `plan_units`): a unit holding stored tasks trains them again, but only `tasks` are scored."""
        device = _resolved(context.device)
        if not supports(context.base_model):
            for task in tasks:
                if self.stop_requested:
                    return
                yield task, context.compute(task)
            return
        wanted = set(tasks)
        sizes = self.sizes(context.base_model)
        pending: list[tuple[SeedTask, Future]] = []
        with ThreadPoolExecutor(max(1, self.options.svm_workers)) as pool:
            for group, trained in self._trained(context, tasks, wanted, batch, device, sizes):
                pending += [(task, pool.submit(self.stages.svm, trained, k, context.settings, device))
                            for k, task in enumerate(group) if task in wanted]
                while pending and pending[0][1].done():  # hand over what is ready, in order
                    task, future = pending.pop(0)
                    yield task, future.result()
            for task, future in pending:
                yield task, future.result()

    def _trained(self, context: EvalContext, tasks: Sequence[SeedTask], wanted: set, batch: Sequence[SeedTask] | None,
                 device: torch.device, sizes: SizeCache) -> Iterator[tuple[list[SeedTask], Trained]]:
        """Train unit after unit (a pack, or one candidate's seeds), drawing the next unit's batches
        in the preparer's processes while this one trains. `wanted`: set(tasks)."""
        settings = context.settings
        size = self.pack_size(context.base_model, device)
        units = plan_units(tasks, context.datasets, settings, self.options, size, batch)
        preparer = self._preparer(device)

        def prepare(unit):
            return preparer.prepare(context.tokenizer, task_jobs(context.datasets, unit), settings)

        ahead = prepare(units[0]) if units else None
        for i, unit in enumerate(units):
            if self.stop_requested:
                return
            prepared = ahead
            ahead = prepare(units[i + 1]) if i + 1 < len(units) else None
            if self.options.pack:
                yield from self._train_pack_fitting(context, unit, prepared, device, sizes, wanted)
            else:
                ids, labels = context.datasets[unit[0].dataset]
                yield unit, self.stages.train_group(context.base_model, context.tokenizer, ids, labels, unit[0].pruned,
                                                     [t.seed for t in unit], settings, device, self.options,
                                                     sizes=sizes, prepared=prepared)

    def _train_pack_fitting(self, context: EvalContext, pack: list[SeedTask], prepared: list, device: torch.device,
                            sizes: SizeCache, wanted: set) -> Iterator[tuple[list[SeedTask], Trained]]:
        """A pack, in parts of at most the size known to fit: a part that runs out of GPU memory is
        halved (and so are the parts after it), as the memory estimate of `auto_pack_size` is rough.
        A part with no task of `wanted` (all stored) is not trained."""
        start = 0
        while start < len(pack):
            cap = self._fits or len(pack)
            part = pack[start:start + cap]
            if not any(t in wanted for t in part):
                start += len(part)
                continue
            trained = None
            try:
                trained = self.stages.train_pack(context.base_model, context.tokenizer, context.datasets, part,
                                                 context.settings, device, self.options, sizes,
                                                 prepared=prepared[start:start + cap])
            except torch.cuda.OutOfMemoryError:
                if len(part) == 1:
                    raise
            if trained is None:  # out of memory: outside the except block its frames (and tensors) are gone
                import gc

                self._fits = max(1, len(part) // 2)
                gc.collect()
                torch.cuda.empty_cache()
                continue
            yield part, trained
            start += len(part)

    def _preparer(self, device: torch.device) -> BatchPreparer:
        workers = self.options.resolved_prep_workers(device)
        if self._prep is None or self._prep.workers != workers:
            self.close()
            self._prep = BatchPreparer(workers)
        return self._prep

    def close(self) -> None:
        if self._prep is not None:
            self._prep.close()
            self._prep = None


def _resolved(device) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(str(device))
