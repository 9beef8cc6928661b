"""Step 1: the importance order of the heads (Algorithms 1 and 2), and seeded random orders.

The gradient criterion and the random criterion both produce an `Order`; the surgery never knows
which one was used (the Torch-Pruning idea)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data import Dataset
from .errors import HeadpruneError, Stopped, past
from .models import family_of
from .scoring import BaseModel, _pad, adamw, encode
from .store import ResultStore
from .surgery import HeadGates

log = logging.getLogger(__name__)

Head = tuple[int, int]


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


@dataclass
class Order:
    """Heads ranked from most to least important; pruning k heads removes the last k."""

    name: str
    ranked: list[Head]
    n_layers: int
    n_heads: int
    kind: str = "importance"  # or "random"
    matrix: list[list[float]] | None = None  # mean importance (importance orders only)
    model: str = ""
    model_fingerprint: str = ""
    datasets: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    settings: dict | None = None  # Step 1 orders: the settings part of their rows' keys (`step1_key_settings`)

    def least_important(self, k: int) -> list[Head]:
        """The k heads pruned first."""
        return sorted(self.ranked[len(self.ranked) - k :]) if k > 0 else []

    def ranks(self) -> np.ndarray:
        """(layers, heads) array: each head's rank, 0 = most important."""
        out = np.zeros((self.n_layers, self.n_heads), dtype=int)
        for rank, (layer, head) in enumerate(self.ranked):
            out[layer, head] = rank
        return out

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "model": self.model,
            "model_fingerprint": self.model_fingerprint,
            "datasets": self.datasets,
            "seeds": self.seeds,
            "settings": self.settings,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "matrix": self.matrix,
            "ranked": [list(h) for h in self.ranked],
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def from_json(cls, data: dict) -> Order:
        return cls(
            name=data["name"],
            ranked=[(int(l), int(h)) for l, h in data["ranked"]],
            n_layers=int(data["n_layers"]),
            n_heads=int(data["n_heads"]),
            kind=data.get("kind", "importance"),
            matrix=data.get("matrix"),
            model=data.get("model", ""),
            model_fingerprint=data.get("model_fingerprint", ""),
            datasets=list(data.get("datasets", [])),
            seeds=list(data.get("seeds", [])),
            settings=data.get("settings"),
        )

    @classmethod
    def load(cls, path: str | Path) -> Order:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            order = cls.from_json(data)
        except FileNotFoundError:
            raise HeadpruneError(f"--order {path}: file not found") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise HeadpruneError(f"--order {path}: not a headprune order file ({err})") from None
        if sorted(order.ranked) != [(l, h) for l in range(order.n_layers) for h in range(order.n_heads)]:
            raise HeadpruneError(f"--order {path}: 'ranked' must list every (layer, head) exactly once")
        return order


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
                input_ids, attention = _pad([ids[i] for i in rows], base.tokenizer.pad_token_id)
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
    """Step 1: mean of the per-epoch matrices over datasets, seeds and epochs; most important first.

    Each (dataset, seed) result goes through `store` (if given), so an interrupted Step 1 resumes.
    Past `deadline` (`time.monotonic()`), no new finetuning starts: `errors.Stopped` is raised.
    `workers` > 1 with a `loader` (a picklable callable that builds this same base model, e.g.
    `functools.partial(load_base, ...)`): the finetunings not in the store run in that many processes
    at once, each computing exactly what it computes here (one batch-16 finetuning cannot fill a GPU)."""
    results: dict[tuple[int, int], list] = {}
    todo: list[tuple[int, int, str | None]] = []
    key_settings = step1_key_settings(base, settings)
    for d, dataset in enumerate(datasets):
        for seed in seeds:
            key = stored = None
            if store is not None:
                key = store.importance_key(base.fingerprint, dataset.content_hash, seed, key_settings)
                stored = store.get_importance(key)
            if stored is None:
                todo.append((d, seed, key))
            else:
                results[(d, seed)] = stored
                if on_result:
                    on_result(dataset.name, seed, True)

    def keep(d: int, seed: int, key: str | None, matrices: list) -> None:
        dataset = datasets[d]
        if store is not None:
            store.put_importance(
                key,
                model=base.fingerprint,
                dataset=dataset.name,
                dataset_hash=dataset.content_hash,
                seed=seed,
                settings=key_settings,
                matrices=matrices,
                device=device.type,
            )
        results[(d, seed)] = matrices
        if on_result:
            on_result(dataset.name, seed, False)

    if workers > 1 and len(todo) > 1 and loader is not None:
        _in_processes(base, datasets, todo, settings, device, deadline, min(workers, len(todo)), loader, keep,
                      deterministic)
    else:
        for d, seed, key in todo:
            if past(deadline):
                raise Stopped("time limit reached during Step 1; finished finetunings are in the store")
            keep(d, seed, key, importance_matrices(base, datasets[d], seed, settings, device))
    matrices: list[list[list[float]]] = []
    for d in range(len(datasets)):
        for seed in seeds:
            matrices += results[(d, seed)]
    mean = np.mean(np.array(matrices, dtype=np.float64), axis=0)
    return Order(
        name=name,
        ranked=rank_heads(mean),
        n_layers=base.n_layers,
        n_heads=base.n_heads,
        kind="importance",
        matrix=mean.tolist(),
        model=base.name,
        model_fingerprint=base.fingerprint,
        datasets=[d.name for d in datasets],
        seeds=list(seeds),
        settings=key_settings,
    )


_WORKER: dict = {}


def _worker_init(loader: Callable[[], BaseModel], fingerprint: str, device: str, threads: int,
                 deterministic: bool) -> None:
    from .scoring import reproducible

    torch.set_num_threads(threads)
    reproducible(torch.device(device), deterministic)
    base = loader()
    if base.fingerprint != fingerprint:
        raise RuntimeError(f"a Step 1 worker built model {base.fingerprint}, not {fingerprint}")
    _WORKER.update(base=base, device=torch.device(device))


def _worker_task(dataset: Dataset, seed: int, settings: ImportanceSettings) -> list:
    return importance_matrices(_WORKER["base"], dataset, seed, settings, _WORKER["device"])


def _in_processes(base, datasets, todo, settings, device, deadline, workers, loader, keep, deterministic) -> None:
    """Step 1's finetunings in `workers` processes; results are kept (stored) as they complete; past
    the deadline the ones not started are cancelled and `Stopped` is raised once the others finish."""
    import multiprocessing
    import os
    from concurrent.futures import CancelledError, ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    stopped = False
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                             initargs=(loader, base.fingerprint, str(device), threads, deterministic)) as pool:
        futures = {pool.submit(_worker_task, datasets[d], seed, settings): (d, seed, key) for d, seed, key in todo}
        try:
            for future in as_completed(futures):
                try:
                    matrices = future.result()
                except CancelledError:
                    continue
                keep(*futures[future], matrices)
                if not stopped and past(deadline):
                    stopped = True
                    for other in futures:
                        other.cancel()
        except BaseException:
            for other in futures:
                other.cancel()
            raise
    if stopped and any(not f.done() or f.cancelled() for f in futures):
        raise Stopped("time limit reached during Step 1; finished finetunings are in the store")


def rank_heads(matrix: np.ndarray) -> list[Head]:
    """Heads from most to least important; equal values keep (layer, head) order."""
    matrix = np.asarray(matrix)
    flat = matrix.reshape(-1)
    order = np.lexsort((np.arange(flat.size), -flat))
    n_heads = matrix.shape[1]
    return [(int(i) // n_heads, int(i) % n_heads) for i in order]


def random_order(
    n_layers: int, n_heads: int, seed: int, name: str = "A1", model: str = "", model_fingerprint: str = ""
) -> Order:
    """A seeded random permutation of the heads (the dissertation's baseline A1, A2, A3)."""
    permutation = np.random.default_rng(seed).permutation(n_layers * n_heads)
    ranked = [(int(i) // n_heads, int(i) % n_heads) for i in permutation]
    return Order(
        name=name,
        ranked=ranked,
        n_layers=n_layers,
        n_heads=n_heads,
        kind="random",
        model=model,
        model_fingerprint=model_fingerprint,
        seeds=[seed],
    )
