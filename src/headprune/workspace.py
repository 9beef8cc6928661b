"""What the run, its dry run and the single-model commands share for one configuration: the device,
the datasets (loaded once, here only), the base model's loading, the executors, the scorer factory
and Step 1's orders. `pipeline.Pipeline` runs the method in a workspace, `plan.py` plans it from
the same one, and `headprune importance`/`score` build one over the defaults.

The executors and the scoring of one task are injection points (`executors`, `score`): a caller
(a test) that watches or replaces them passes its own; the defaults are the method's."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

from .base import BaseModel, load_base
from .config import Config
from .data import Dataset, cap_examples, check_enough_per_class, expand_datasets, load_dataset
from .devices import check_precision, reproducible, resolve_device
from .errors import HeadpruneError
from .executors import checked_engine, make_executor
from .importance import Order, Step1Run, criterion_for
from .progress import RunProgress
from .protocol import batched_engine
from .scorer import Scorer
from .scoring import run_task
from .settings import ScoreSettings
from .store import ResultStore
from .tasks import EvalContext, Executor, SeedScore, SeedTask


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "headprune"


class Workspace:
    """One configuration's device, datasets, base model, executors and scorers.

    `executors(config, stage)` makes each stage's executor (`executors.make_executor`, stages
    "step1", "step2", "generalization", "timing"); `score(context, task)` computes one score by the
    reference loop (`scoring.run_task`). Past `deadline` (`time.monotonic()`) no new evaluation
    starts (`errors.Stopped`)."""

    def __init__(self, config: Config, progress: RunProgress | None = None, deadline: float | None = None,
                 executors: Callable[[Config, str], Executor] = make_executor,
                 score: Callable[[EvalContext, SeedTask], SeedScore] = run_task):
        self.config = config
        self.progress = progress or RunProgress()
        self.deadline = deadline
        self.executors = executors
        self.score = score
        self.data_dir = config.data.data_dir or None
        self.device = resolve_device(config.run.device)
        reproducible(self.device, config.run.deterministic)
        check_precision(config.run.precision, self.device)
        self._datasets: dict[str, Dataset] = {}
        self.sources: dict[str, str] = {}  # dataset name (file stem for user files) -> name or path

    @property
    def settings(self) -> ScoreSettings:
        return self.config.scoring  # [scoring] is a (frozen) ScoreSettings

    # ------------------------------------------------------------------ datasets
    def dataset(self, name: str) -> Dataset:
        """A dataset by bundled name, file path, or the display name of one already loaded."""
        name = self.sources.get(name, name)
        if name not in self._datasets:
            loaded = load_dataset(
                name,
                text_column=self.config.data.text_column,
                label_column=self.config.data.label_column,
                data_dir=self.data_dir,
            )
            self._datasets[name] = cap_examples(loaded, self.config.data.max_examples)
        return self._datasets[name]

    def datasets(self, spec: list[str], check_folds: bool = True) -> list[Dataset]:
        out = []
        for item in expand_datasets(spec):
            ds = self.dataset(item)
            if self.sources.setdefault(ds.name, item) != item:
                raise HeadpruneError(
                    f"two datasets are both named '{ds.name}' ({self.sources[ds.name]} and {item}); rename one file"
                )
            out.append(ds)
        if check_folds:
            for ds in out:
                check_enough_per_class(ds, self.settings.n_folds)
        return out

    def rows(self, name: str) -> float:
        """Rows one evaluation on `name` finetunes (half the dataset): the unit of the time left."""
        return len(self.dataset(name)) / 2

    # ------------------------------------------------------------------ the base model
    def cache_dir(self) -> Path:
        return Path(self.config.model.cache_dir) if self.config.model.cache_dir else default_cache_dir()

    def load_base(self) -> BaseModel:
        return load_base(
            self.config.model.name,
            self.config.model.warmup(),
            data_dir=self.data_dir,
            columns=(self.config.data.text_column, self.config.data.label_column),
            cache_dir=self.cache_dir(),
            device=self.device,
            progress=self.progress.log,
        )

    def base_loader(self) -> Callable[[], BaseModel]:
        """A picklable callable building the same base model (for worker processes; the warmed-up
        head comes from the cache `load_base` filled)."""
        return functools.partial(load_base, self.config.model.name, self.config.model.warmup(), data_dir=self.data_dir,
                                 cache_dir=self.cache_dir(),
                                 columns=(self.config.data.text_column, self.config.data.label_column))

    # ------------------------------------------------------------------ engines and executors
    def batched(self) -> bool:
        """Whether Step 2's and the generalization's evaluations run on the batched engine (in process
        or as Ray units): `protocol.batched_engine`'s rule on this device; where the configuration leaves
        it to the Ray workers' devices, as this machine's device would."""
        decided = batched_engine(self.config, self.device.type)
        return self.device.type == "cuda" if decided is None else decided

    def check_engine(self, base: BaseModel) -> None:
        """Before the batched engine is trusted with this run by `run.engine = "auto"`, its self-check
        on this device; on a failure the configuration says "reference" from here on (executors,
        departures, the summary), one line saying why (`executors.checked_engine`)."""
        self.config = checked_engine(self.config, base.model, base.tokenizer, base.max_length, self.device,
                                     self.progress.log)

    def executor(self, stage: str) -> Executor:
        return self.executors(self.config, stage)

    def scorer(self, base: BaseModel, store: ResultStore, seeds: list[int], executor: Executor,
               settings: ScoreSettings | None = None) -> Scorer:
        return Scorer(
            base,
            store,
            self.settings if settings is None else settings,
            seeds=seeds,
            # On Ray the workers choose their own device: the driver may have no GPU.
            device=self.config.run.device if self.config.run.executor == "ray" else str(self.device),
            executor=executor,
            on_result=lambda task, score, cached: self.progress.advance(cached, work=self.rows(task.dataset)),
            datasets=self.dataset,
            deadline=self.deadline,
            log=self.progress.log,
            base_loader=self.base_loader(),
            precision=self.config.run.precision,
            score=self.score,
        )

    # ------------------------------------------------------------------ Step 1
    def order(self, name: str, base: BaseModel, store: ResultStore) -> Order:
        """The order `name` of `[step2] orders` by its criterion (`importance.criterion_for`); one read
        from Step 1 (kind "importance") runs its finetunings through the store and the Step 1 executor
        (the Step 1 orders share them), a random or weights order needs only the base model."""
        criterion = criterion_for(name, lambda: self.datasets(self.config.step1.datasets, check_folds=False),
                                  self.config.step1_seeds, self.config.step1.finetuning())
        if criterion.kind != "importance":
            return criterion.order(base)
        datasets, seeds = criterion.datasets, criterion.seeds
        rows = {d.name: len(d) for d in datasets}  # the time left weighs each finetuning by its rows
        self.progress.start_stage("Step 1: importance", len(datasets) * len(seeds), sum(rows.values()) * len(seeds))
        executor = self.executor("step1")
        try:
            order = criterion.order(base, Step1Run(
                store=store,
                executor=executor,
                device=self.device,
                on_result=lambda ds, seed, cached: self.progress.advance(cached, work=rows[ds]),
                deadline=self.deadline,
                loader=self.base_loader(),
                deterministic=self.config.run.deterministic,
            ))
        finally:
            executor.close()
        self.progress.end_stage()
        return order


__all__ = ["Workspace", "default_cache_dir"]
