"""The Step 1 criterion (Algorithms 1 and 2): finetune with a fresh classification head, read the
gradient of all-ones head gates, normalise per batch and per epoch; the order is the mean of the
per-epoch matrices over datasets, seeds and epochs (most important first)."""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
from ..store import ResultStore
from ..surgery import HeadGates
from ..tasks import Executor, ImportanceTask
from .order import Order, rank_heads

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ImportanceSettings:
    """Finetuning for Step 1 (METHOD.md): fresh classification head, AdamW, batch 16, 4 epochs."""

    epochs: int = 4
    batch_size: int = 16
    learning_rate: float = 2e-5
    adam_epsilon: float = 1e-8

    def as_dict(self) -> dict:
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "adam_epsilon": self.adam_epsilon,
        }


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


def importance_matrices(
    base: BaseModel, dataset: Dataset, seed: int, settings: ImportanceSettings, device: torch.device
) -> list[list[list[float]]]:
    """Algorithm 1 on one dataset and seed: finetune with a fresh classification head and read the
    gradient of all-ones head gates. Returns the per-epoch (layers x heads) matrices."""
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
                gates.gates.grad = None
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
            accumulator.end_epoch()
    return [m.tolist() for m in accumulator.epochs]


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

    def compute(self, task: ImportanceTask) -> list[list[list[float]]]:
        return importance_matrices(self.base, self.datasets[task.dataset], task.seed, self.settings, self.device)

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


@dataclass
class GradientImportance:
    """The dissertation's Step 1 criterion (`OI`): `order(base, ...)` runs the finetunings of every
    (dataset, seed) through the store first and `executor` for the rest (`scorer.run_stored`), so an
    interrupted Step 1 resumes, then averages their per-epoch matrices."""

    datasets: Sequence[Dataset]
    seeds: Sequence[int]
    settings: ImportanceSettings = ImportanceSettings()
    name: str = "OI"
    kind = "importance"

    def order(
        self,
        base: BaseModel,
        store: ResultStore | None = None,
        executor: Executor | None = None,
        device: torch.device = torch.device("cpu"),
        on_result: Callable[[str, int, bool], None] | None = None,
        deadline: float | None = None,
        loader: Callable[[], BaseModel] | None = None,
        deterministic: bool = True,
    ) -> Order:
        """Step 1's order. Past `deadline` (`time.monotonic()`) no new finetuning starts and
        `errors.Stopped` is raised (finished ones are in `store`). `loader`: a picklable callable
        building this same base model, for executors that run in worker processes."""
        by_name = {d.name: d for d in self.datasets}
        if len(by_name) != len(self.datasets):
            raise HeadpruneError(f"Step 1: a dataset is listed twice ({[d.name for d in self.datasets]})")
        key_settings = step1_key_settings(base, self.settings)

        def key(task: ImportanceTask) -> str:
            dataset = by_name[task.dataset]
            return ResultStore.importance_key(base.fingerprint, dataset.content_hash, task.seed, key_settings)

        def lookup(task: ImportanceTask):
            return store.get_importance(key(task)) if store is not None else None

        def put(task: ImportanceTask, matrices: list) -> None:
            if store is None:
                return
            dataset = by_name[task.dataset]
            store.put_importance(key(task), model=base.fingerprint, dataset=dataset.name,
                                 dataset_hash=dataset.content_hash, seed=task.seed, settings=key_settings,
                                 matrices=matrices, device=device.type)

        tasks = [ImportanceTask(d.name, int(seed)) for d in self.datasets for seed in self.seeds]
        context = ImportanceContext(base, by_name, self.settings, device, loader, deterministic)
        results = run_stored(
            tasks, lookup, put, executor or InProcessExecutor(), lambda _batch: context, deadline=deadline,
            on_result=(lambda task, _m, cached: on_result(task.dataset, task.seed, cached)) if on_result else None,
            stopped=lambda _done, _total: "time limit reached during Step 1; finished finetunings are in the store",
        )
        matrices = [m for task in tasks for m in results[task]]
        mean = np.mean(np.array(matrices, dtype=np.float64), axis=0)
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
            settings=key_settings,
            dataset_hashes={d.name: d.content_hash for d in self.datasets},
        )


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
        base, store=store, executor=executor, device=device, on_result=on_result, deadline=deadline, loader=loader,
        deterministic=deterministic)
