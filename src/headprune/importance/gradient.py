"""The Step 1 criterion (Algorithms 1 and 2): finetune with a fresh classification head, read the
gradient of all-ones head gates, normalise per batch and per epoch; the order is the mean of the
per-epoch matrices over datasets, seeds and epochs (most important first).

One finetuning also records the raw gate gradients (`GateStatistics`: per epoch, the sums of |g| and
of g^2 before any normalisation), stored in a row of its own beside the OI row, so that criteria
normalising otherwise (`statistics.py`) come from the same finetunings: `Step1Criterion` is their
common part, `step1_finetunings` the one store-first loop over (dataset, seed)."""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..base import BaseModel
from ..data import Dataset
from ..devices import reproducible
from ..errors import HeadpruneError
from ..executors.local import InProcessExecutor
from ..families import family_of
from ..scorer import run_stored
from ..scoring import adamw, encode, pad_batch
from ..settings import ImportanceSettings
from ..store import ResultStore
from ..surgery import HeadGates
from ..tasks import Executor, ImportanceTask
from .order import Order, RunMatrix, rank_heads

log = logging.getLogger(__name__)

# The `statistics` entry of the raw rows' keys: what they hold (`GateStatistics.to_json`). Renamed
# whenever that changes, so that rows of another content are never read as these.
STATISTICS = "raw-abs-sq"


@dataclass(frozen=True)
class Step1Run:
    """How a criterion's Step 1 finetunings run (what to compute is the criterion's): the `store`
    they are read from first and written to; the `executor` for the others (in-process by default);
    the `device`; `on_result(dataset, seed, from_store)` after each; past `deadline`
    (`time.monotonic()`) no new one starts and `errors.Stopped` is raised; `loader`, a picklable
    callable building the same base model, for executors that run in worker processes;
    `deterministic` (`devices.reproducible`)."""

    store: ResultStore | None = None
    executor: Executor | None = None
    device: torch.device = torch.device("cpu")
    on_result: Callable[[str, int, bool], None] | None = None
    deadline: float | None = None
    loader: Callable[[], BaseModel] | None = None
    deterministic: bool = True


def min_max(x: torch.Tensor) -> torch.Tensor:
    """Scale to [0, 1]; a constant matrix becomes all zeros (nothing distinguishes the heads)."""
    low, high = x.min(), x.max()
    if float(high - low) == 0.0:
        return torch.zeros_like(x)
    return (x - low) / (high - low)


class ImportanceAccumulator:
    """Algorithm 2's bookkeeping, separate from any model so it can be tested on hand-made gradients.

    Per batch: importance += |grad|, then min-max. Per epoch: importance / n_tokens, then min-max,
    and a copy is kept. `importance` carries over into the next epoch."""

    def __init__(self, shape: tuple[int, int], n_tokens: int):
        self.importance = torch.zeros(shape, dtype=torch.float64)
        self.n_tokens = n_tokens
        self.epochs: list[torch.Tensor] = []

    def add_batch(self, grad: torch.Tensor) -> None:
        self.importance = min_max(self.importance + grad.detach().abs().to(torch.float64).cpu())

    def end_epoch(self) -> None:
        self.importance = min_max(self.importance / self.n_tokens)
        self.epochs.append(self.importance.clone())


@dataclass(frozen=True)
class GateStatistics:
    """The raw gate gradients of one finetuning, per epoch, before any normalisation: the sums over the
    epoch's batches of |g| and of g^2 (g = d loss / d gate of one batch; layers x heads each), the
    number of batches of each epoch and the tokens of the dataset. What the criteria that normalise
    otherwise than Algorithm 2 read (its per-batch min-max cannot be undone from sums, nor redone)."""

    abs_sums: list[list[list[float]]]
    squared_sums: list[list[list[float]]]
    batches: list[int]
    tokens: int

    def to_json(self) -> dict:
        return {"abs": self.abs_sums, "squared": self.squared_sums, "batches": self.batches, "tokens": self.tokens}

    @classmethod
    def from_json(cls, data: dict) -> GateStatistics:
        return cls(abs_sums=data["abs"], squared_sums=data["squared"], batches=[int(b) for b in data["batches"]],
                   tokens=int(data["tokens"]))


class GateSums:
    """Accumulates `GateStatistics` beside Algorithm 2's bookkeeping: per batch |g| and g^2 are added
    (float64), per epoch the sums are kept and start again from zero."""

    def __init__(self, shape: tuple[int, int], n_tokens: int):
        self.n_tokens = n_tokens
        self._abs = torch.zeros(shape, dtype=torch.float64)
        self._squared = torch.zeros(shape, dtype=torch.float64)
        self._batches = 0
        self.epochs: list[tuple[torch.Tensor, torch.Tensor, int]] = []

    def add_batch(self, grad: torch.Tensor) -> None:
        g = grad.detach().to(torch.float64).cpu()
        self._abs += g.abs()
        self._squared += g * g
        self._batches += 1

    def end_epoch(self) -> None:
        self.epochs.append((self._abs.clone(), self._squared.clone(), self._batches))
        self._abs.zero_()
        self._squared.zero_()
        self._batches = 0

    def statistics(self) -> GateStatistics:
        return GateStatistics(abs_sums=[a.tolist() for a, _, _ in self.epochs],
                              squared_sums=[q.tolist() for _, q, _ in self.epochs],
                              batches=[b for _, _, b in self.epochs], tokens=self.n_tokens)


@dataclass(frozen=True)
class Finetuning:
    """What one Step 1 finetuning (a dataset with a seed) yields: Algorithm 2's per-epoch matrices (the
    OI row) and the raw gate statistics (the statistics row)."""

    matrices: list[list[list[float]]]
    statistics: GateStatistics


def pooler_tag(base: BaseModel) -> str | None:
    """What Step 1's classification model starts its pooler from, as part of every Step 1 key:
    "pretrained:<hash>" (the checkpoint's), "fresh" (the checkpoint has none), or None for a family
    whose classification model has no pooler (RoBERTa: those keys are as they always were). Rows
    stored before the checkpoint's pooler was loaded (a random pooler) have no such entry and are
    never reused for a model that has one."""
    if family_of(base.model.config).pooler is None:
        return None
    state = getattr(base.model, "headprune_pooler_state", None) or {}
    if not state:
        return "fresh"
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return f"pretrained:{digest.hexdigest()[:12]}"


def step1_key_settings(base: BaseModel, settings: ImportanceSettings) -> dict:
    """The settings part of a Step 1 row's key: the finetuning settings and where the pooler came from."""
    tag = pooler_tag(base)
    return settings.as_dict() if tag is None else {**settings.as_dict(), "pooler": tag}


def statistics_key_settings(base: BaseModel, settings: ImportanceSettings) -> dict:
    """The settings part of a statistics row's key: the OI row's (`step1_key_settings`, unchanged, so
    that OI rows stay valid) and `"statistics": STATISTICS`, which keeps the two kinds of rows apart."""
    return {**step1_key_settings(base, settings), "statistics": STATISTICS}


def classification_model(base: BaseModel, n_labels: int):
    """Step 1's model (METHOD.md: "load the pretrained model with a fresh sequence-classification
    head"): every weight from the checkpoint (the encoder, and the pooler where the family has one),
    only the classifier fresh, initialised from torch's global RNG (the caller seeds it)."""
    from transformers import AutoModelForSequenceClassification

    config = base.model.config.__class__.from_dict(base.model.config.to_dict())
    config.num_labels = n_labels
    for attr in ("headprune_kept", "headprune_original_layers"):
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForSequenceClassification.from_config(config)
    state = dict(base.model.base_model.state_dict())
    pooler = family_of(config).pooler
    pretrained = getattr(base.model, "headprune_pooler_state", None) or {}
    if pooler is not None:
        state.update({f"{pooler}.{name}": tensor for name, tensor in pretrained.items()})
    missing, unexpected = model.base_model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    fresh_pooler = [k for k in missing if pooler is not None and k.startswith(f"{pooler}.")]
    if fresh_pooler and not pretrained:
        log.warning("the checkpoint holds no pooler: Step 1 trains a freshly initialised one")
    wrong = [k for k in missing if not (k in fresh_pooler and not pretrained)] + list(unexpected)
    if wrong:
        raise HeadpruneError(f"Step 1: the classification model does not match the checkpoint ({wrong[0]})")
    return model


def finetune(
    base: BaseModel, dataset: Dataset, seed: int, settings: ImportanceSettings, device: torch.device
) -> Finetuning:
    """Algorithm 1 on one dataset and seed: finetune with a fresh classification head and read the
    gradient of all-ones head gates, into Algorithm 2's per-epoch matrices and, from the same
    gradients, the raw `GateStatistics` (reading them draws nothing: the matrices are those of
    Algorithm 1 alone)."""
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    model = classification_model(base, len(dataset.classes))
    model.to(device).train()
    ids = encode(base.tokenizer, dataset.texts, base.max_length)
    labels = torch.tensor(dataset.labels, dtype=torch.long)
    n_tokens = sum(len(x) for x in ids)
    steps_per_epoch = math.ceil(len(ids) / settings.batch_size)
    optimizer = adamw(model.parameters(), settings.learning_rate, settings.adam_epsilon)
    schedule = get_linear_schedule_with_warmup(optimizer, 0, steps_per_epoch * settings.epochs)
    generator = torch.Generator().manual_seed(seed)
    accumulator = ImportanceAccumulator((base.n_layers, base.n_heads), n_tokens)
    sums = GateSums((base.n_layers, base.n_heads), n_tokens)
    with HeadGates(model, requires_grad=True) as gates:
        for _ in range(settings.epochs):
            permutation = torch.randperm(len(ids), generator=generator).tolist()
            for b in range(steps_per_epoch):
                rows = permutation[b * settings.batch_size : (b + 1) * settings.batch_size]
                input_ids, attention = pad_batch([ids[i] for i in rows], base.tokenizer.pad_token_id)
                out = model(
                    input_ids=input_ids.to(device), attention_mask=attention.to(device), labels=labels[rows].to(device)
                )
                out.loss.backward()
                accumulator.add_batch(gates.gates.grad)
                sums.add_batch(gates.gates.grad)
                gates.gates.grad = None
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
            accumulator.end_epoch()
            sums.end_epoch()
    return Finetuning(matrices=[m.tolist() for m in accumulator.epochs], statistics=sums.statistics())


def importance_matrices(
    base: BaseModel, dataset: Dataset, seed: int, settings: ImportanceSettings, device: torch.device
) -> list[list[list[float]]]:
    """Algorithm 1 on one dataset and seed: Algorithm 2's per-epoch (layers x heads) matrices alone."""
    return finetune(base, dataset, seed, settings, device).matrices


@dataclass
class ImportanceContext:
    """What an executor needs to compute Step 1 finetunings (`ImportanceTask`s): the base model,
    the datasets by name, the settings, the device. Worker processes build their own from
    `recipe()` (the base model is loaded there, not pickled, and checked by fingerprint)."""

    base: BaseModel
    datasets: dict[str, Dataset]
    settings: ImportanceSettings
    device: torch.device
    loader: Callable[[], BaseModel] | None = None
    deterministic: bool = True

    def compute(self, task: ImportanceTask) -> Finetuning:
        return finetune(self.base, self.datasets[task.dataset], task.seed, self.settings, self.device)

    def recipe(self) -> Callable[[], ImportanceContext]:
        if self.loader is None:
            raise HeadpruneError("Step 1 in worker processes needs a loader of the base model")
        return functools.partial(_worker_context, self.loader, self.base.fingerprint, self.datasets, self.settings,
                                 str(self.device), self.deterministic)


def _worker_context(loader: Callable[[], BaseModel], fingerprint: str, datasets: dict[str, Dataset],
                    settings: ImportanceSettings, device: str, deterministic: bool) -> ImportanceContext:
    reproducible(torch.device(device), deterministic)
    base = loader()
    if base.fingerprint != fingerprint:
        raise RuntimeError(f"a Step 1 worker built model {base.fingerprint}, not {fingerprint}")
    return ImportanceContext(base, datasets, settings, torch.device(device))


def stored_row(row: str, value: Any) -> Any:
    """A Step 1 row's decoded content as a criterion reads it: the per-epoch matrices of an OI row
    ("matrices") as they are, a statistics row as `GateStatistics`."""
    return GateStatistics.from_json(value) if row == "statistics" else value


def step1_finetunings(
    base: BaseModel,
    datasets: Sequence[Dataset],
    seeds: Sequence[int],
    settings: ImportanceSettings,
    row: str,
    run: Step1Run = Step1Run(),
) -> dict[ImportanceTask, Any]:
    """Every (dataset, seed) finetuning of Step 1, in that order, as its `row`: "matrices" (Algorithm
    2's per-epoch matrices, the OI row) or "statistics" (`GateStatistics`). Stored rows come from
    `run.store`, the others from `run.executor` (`scorer.run_stored`: resumable, past the deadline
    nothing new starts and `errors.Stopped` is raised). A finetuning that runs writes both its rows,
    so criteria reading either kind share it: the first order of a run to need a finetuning pays for all."""
    store = run.store
    if row not in ("matrices", "statistics"):
        raise ValueError(f"row must be 'matrices' or 'statistics', got {row!r}")
    by_name = {d.name: d for d in datasets}
    if len(by_name) != len(datasets):
        raise HeadpruneError(f"Step 1: a dataset is listed twice ({[d.name for d in datasets]})")
    keyed = {"matrices": step1_key_settings(base, settings), "statistics": statistics_key_settings(base, settings)}

    def key(task: ImportanceTask, kind: str) -> str:
        return ResultStore.importance_key(base.fingerprint, by_name[task.dataset].content_hash, task.seed, keyed[kind])

    def lookup(task: ImportanceTask):
        stored = store.get_importance(key(task, row)) if store is not None else None
        return None if stored is None else stored_row(row, stored)

    def put(task: ImportanceTask, finetuning: Finetuning) -> None:
        if store is None:
            return
        dataset = by_name[task.dataset]
        for kind, value in (("matrices", finetuning.matrices), ("statistics", finetuning.statistics.to_json())):
            store.put_importance(key(task, kind), model=base.fingerprint, dataset=dataset.name,
                                 dataset_hash=dataset.content_hash, seed=task.seed, settings=keyed[kind],
                                 matrices=value, device=run.device.type)

    tasks = [ImportanceTask(d.name, int(seed)) for d in datasets for seed in seeds]
    context = ImportanceContext(base, by_name, settings, run.device, run.loader, run.deterministic)
    on_result = run.on_result
    results = run_stored(
        tasks, lookup, put, run.executor or InProcessExecutor(), lambda _batch: context, deadline=run.deadline,
        on_result=(lambda task, _m, cached: on_result(task.dataset, task.seed, cached)) if on_result else None,
        stopped=lambda _done, _total: "time limit reached during Step 1; finished finetunings are in the store",
    )
    return {task: getattr(results[task], row) if isinstance(results[task], Finetuning) else results[task]
            for task in tasks}


@dataclass
class Step1Criterion(ABC):
    """A criterion read from Step 1's finetunings of every (dataset, seed): `order(base, ...)` runs them
    through the store first and `executor` for the rest (`step1_finetunings`), so an interrupted Step 1
    resumes; each run's stored `row` becomes its per-epoch matrices (`epoch_matrices`), and the order
    is their mean over datasets, seeds and epochs (most important first). The order keeps each run's
    own matrix (the mean over its epochs: `Order.runs`), from which `stability` measures how well
    the order reproduces."""

    datasets: Sequence[Dataset]
    seeds: Sequence[int]
    settings: ImportanceSettings = ImportanceSettings()
    name: str = ""
    kind = "importance"
    row = "matrices"  # which stored row it reads: "matrices" (the OI rows) or "statistics"

    @abstractmethod
    def epoch_matrices(self, stored: Any) -> list[np.ndarray]:
        """One run's (layers x heads) matrix per epoch, from its stored row."""

    def key_settings(self, base: BaseModel) -> dict:
        """The settings part of its rows' keys (what `headprune verify` selects them by)."""
        if self.row == "statistics":
            return statistics_key_settings(base, self.settings)
        return step1_key_settings(base, self.settings)

    def order(self, base: BaseModel, run: Step1Run = Step1Run()) -> Order:
        """The order, its finetunings run as `run` says (past its deadline no new one starts and
        `errors.Stopped` is raised; finished ones are in its store)."""
        runs = step1_finetunings(base, self.datasets, self.seeds, self.settings, self.row, run)
        per_run = {task: self.epoch_matrices(stored) for task, stored in runs.items()}
        mean = np.mean(np.array([m for matrices in per_run.values() for m in matrices], dtype=np.float64), axis=0)
        return Order(
            name=self.name,
            ranked=rank_heads(mean),
            n_layers=base.n_layers,
            n_heads=base.n_heads,
            kind=self.kind,
            matrix=mean.tolist(),
            model=base.name,
            model_fingerprint=base.fingerprint,
            datasets=[d.name for d in self.datasets],
            seeds=[int(s) for s in self.seeds],
            settings=self.key_settings(base),
            dataset_hashes={d.name: d.content_hash for d in self.datasets},
            runs=[RunMatrix(task.dataset, task.seed, np.mean(np.array(m, dtype=np.float64), axis=0).tolist())
                  for task, m in per_run.items()],
        )


@dataclass
class GradientImportance(Step1Criterion):
    """The dissertation's Step 1 criterion (`OI`): the mean of Algorithm 2's per-epoch matrices (the
    OI rows, whose keys and content are as they always were)."""

    name: str = "OI"

    def epoch_matrices(self, stored: list) -> list[np.ndarray]:
        return [np.asarray(m, dtype=np.float64) for m in stored]


def importance_order(
    base: BaseModel,
    datasets: Sequence[Dataset],
    seeds: Sequence[int],
    settings: ImportanceSettings = ImportanceSettings(),
    store: ResultStore | None = None,
    device: torch.device = torch.device("cpu"),
    name: str = "OI",
    on_result: Callable[[str, int, bool], None] | None = None,
    deadline: float | None = None,
    workers: int = 1,
    loader: Callable[[], BaseModel] | None = None,
    deterministic: bool = True,
) -> Order:
    """Step 1 (`GradientImportance`): the mean of the per-epoch matrices over datasets, seeds and
    epochs; most important first. `workers` > 1 with a `loader`: the finetunings not in the store
    run in that many processes at once (`executors.ProcessExecutor`; one batch-16 finetuning cannot
    fill a GPU), each computing exactly what it computes here."""
    from ..executors.local import ProcessExecutor

    executor = ProcessExecutor(workers) if workers > 1 and loader is not None else InProcessExecutor()
    return GradientImportance(datasets, seeds, settings, name).order(
        base, Step1Run(store=store, executor=executor, device=device, on_result=on_result, deadline=deadline,
                       loader=loader, deterministic=deterministic))
