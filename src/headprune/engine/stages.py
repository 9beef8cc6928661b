"""The three stages of PRUN_ADJ_EVAL for stacked models: adjusting, features, SVM; groups and packs."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..checkpoint import saved_size
from ..data import split_halves
from ..heads import Head, HeadSet
from ..models import count_parameters
from ..scoring import svm_f1
from ..settings import ScoreSettings
from ..surgery import prune_heads
from ..tasks import SeedScore, SeedTask
from .batches import flat_rows_step, prefetched, training_steps
from .optim import StackedAdamW
from .options import EngineOptions, group_seed
from .stack import StackedMLM


def adjust_stacked(stack: StackedMLM, tokenizer, jobs: Sequence[tuple[list[list[int]], int]],
                   settings: ScoreSettings, options: EngineOptions = EngineOptions(),
                   stats: dict | None = None, prepared: Sequence | None = None) -> float:
    """Continued MLM of the N stacked models together; job i = (finetuning ids, seed) of model i.
    Returns the shared wall time in seconds. `stats`, if given, gets "tokens" (real tokens trained
    on, summed over models) and "steps". `prepared`: `BatchPreparer.prepare(...)` of the jobs."""
    if len(jobs) != stack.n_models:
        raise ValueError(f"{len(jobs)} jobs for {stack.n_models} stacked models")
    device = stack.device
    start = time.perf_counter()
    torch.manual_seed(group_seed([seed for _, seed in jobs]))
    optimizer = StackedAdamW(stack.params.values(), stack.n_models, settings.adam_epsilon)
    amp = options.use_amp(device)
    loss_fn = stack.mlm_loss
    if options.compile and device.type == "cuda":
        loss_fn = torch.compile(stack.mlm_loss, dynamic=None)
    depth = options.prefetch if options.prefetch is not None else (4 if device.type == "cuda" else 0)
    transform = (lambda s: s.pin()) if device.type == "cuda" else None
    tokens = steps = 0
    ticks = training_steps(tokenizer, jobs, settings, optimizer, options.width_multiple, prepared,
                           stack.pad_token_id if stack.padded_positions else None)
    for step in prefetched(ticks, depth, transform):
        tokens += step.tokens
        steps += 1
        step = step.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(step)
        loss.backward()
        optimizer.step(step.scalars)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    for p in stack.params.values():  # the gradient buffers and the Adam state go before the features
        p.grad = None
    del optimizer
    if stats is not None:
        stats["tokens"] = stats.get("tokens", 0) + tokens
        stats["steps"] = stats.get("steps", 0) + steps
    return time.perf_counter() - start


@torch.no_grad()
def features_stacked(stack: StackedMLM, ids: Sequence[list[list[int]]], pad_id: int, settings: ScoreSettings,
                     options: EngineOptions = EngineOptions()) -> list[np.ndarray]:
    """`scoring.features` for each stacked model on its own rows (fp32, no dropout): the mean over
    non-padding tokens of the concatenated last min(feature_layers, layers) layer outputs."""
    device = stack.device
    n = stack.n_models
    if len(ids) != n:
        raise ValueError(f"{len(ids)} row lists for {stack.n_models} stacked models")
    # Model j's features: its last min(feature_layers, its layers) layers (models of a masked stack
    # may have removed layers).
    wanted = []
    for j in range(n):
        layers = stack.kept_layers(j)
        wanted.append(layers[-min(settings.feature_layers, len(layers)):])
    needed = sorted({layer for w in wanted for layer in w})
    orders = [sorted(range(len(rows)), key=lambda i, rows=rows: len(rows[i])) for rows in ids]
    out = [np.zeros((len(rows), len(wanted[j]) * stack.config.hidden_size), dtype=np.float32)
           for j, rows in enumerate(ids)]
    chunk = options.feature_batch
    position_pad = stack.pad_token_id if stack.padded_positions else None
    n_chunks = max(math.ceil(len(rows) / chunk) for rows in ids) if ids else 0
    for c in range(n_chunks):
        parts = [order[c * chunk: (c + 1) * chunk] for order in orders]
        step = flat_rows_step([[ids[j][i] for i in part] for j, part in enumerate(parts)], pad_id, position_pad,
                              options.width_multiple).to(device)
        _, rows, width = step.attention.shape
        mask = step.attention.unsqueeze(-1).float()
        count = mask.sum(2)
        slots = step.to_padded.unsqueeze(-1)
        # The mean of the concatenation is the concatenation of the means (per feature): pool each
        # layer on its own as it is computed rather than materialise (N, rows, width, layers * H).
        pooled: dict[int, torch.Tensor] = {}

        def pool(i: int, h: torch.Tensor, pooled=pooled, rows=rows, width=width, mask=mask, count=count,
                 slots=slots) -> None:
            if i in needed:  # the flat tokens back into rows (padding slots hold token 0: masked out)
                padded = torch.gather(h.float(), 1, slots.expand(-1, -1, h.shape[-1]))
                pooled[i] = (padded.view(n, rows, width, -1) * mask).sum(2) / count

        stack.encode_flat(step, training=False, on_layer=pool)
        host = {i: t.cpu().numpy() for i, t in pooled.items()}
        for j, part in enumerate(parts):
            if part:
                out[j][part] = np.concatenate([host[i][j, : len(part)] for i in wanted[j]], axis=-1)
    return out


# ----------------------------------------------------------------------------- a group of seeds


@dataclass
class Trained:
    """What one stack's GPU stage leaves for the SVM stage (one entry per model)."""

    features: list[np.ndarray]
    labels: list[np.ndarray]
    seeds: list[int]
    adjust_seconds: float
    pruned: list[tuple[Head, ...]]
    sizes: SizeCache  # parameters and file size by pruned set (asked for in the SVM threads)


class SizeCache:
    """Parameter count and safetensors size of the base model pruned by a set of heads (computed
    once per pruned set: physically pruning a copy and serialising it in memory)."""

    def __init__(self, base_model):
        self.base_model = base_model
        self._sizes: dict[tuple[Head, ...], tuple[int, int]] = {}

    def __call__(self, pruned: Iterable[Head], model=None) -> tuple[int, int]:
        key = HeadSet(pruned).ordered()
        if key not in self._sizes:
            if model is None:
                model = copy.deepcopy(self.base_model)
                if key:
                    prune_heads(model, list(key))
            self._sizes[key] = (count_parameters(model), saved_size(model))
        return self._sizes[key]


def train_group(base_model, tokenizer, ids, labels, pruned, seeds, settings, device, options,
                 stats: dict | None = None, sizes: SizeCache | None = None, prepared: Sequence | None = None
                 ) -> Trained:
    model = copy.deepcopy(base_model)
    pruned = list(pruned)
    if pruned:
        prune_heads(model, pruned)
    sizes = sizes or SizeCache(base_model)
    sizes(pruned, model)  # the pruned model is at hand: measure it now
    splits = [split_halves(labels, seed) for seed in seeds]
    feats: list[np.ndarray] = []
    seconds = 0.0
    chunk = options.max_models or len(seeds)
    for start in range(0, len(seeds), chunk):
        part = list(range(start, min(start + chunk, len(seeds))))
        stack = StackedMLM.replicate(model, len(part), device)
        jobs = [([ids[i] for i in splits[k][0]], seeds[k]) for k in part]
        seconds += adjust_stacked(stack, tokenizer, jobs, settings, options, stats,
                                  [prepared[k] for k in part] if prepared else None)
        start_features = time.perf_counter()
        feats += features_stacked(stack, [[ids[i] for i in splits[k][1]] for k in part], tokenizer.pad_token_id,
                                  settings, options)
        if stats is not None:
            stats["features_seconds"] = stats.get("features_seconds", 0.0) + time.perf_counter() - start_features
        del stack
    if stats is not None:
        stats["adjust_seconds"] = stats.get("adjust_seconds", 0.0) + seconds
    n = len(seeds)
    return Trained(feats, [labels[split[1]] for split in splits], list(seeds), seconds, [tuple(pruned)] * n, sizes)


def task_jobs(datasets: dict, tasks: Sequence[SeedTask]) -> list[tuple[list[list[int]], int]]:
    """(finetuning rows, seed) of each task: the first half of its dataset's seeded split."""
    return [([datasets[t.dataset][0][i] for i in split_halves(datasets[t.dataset][1], t.seed)[0]], t.seed)
            for t in tasks]


def train_pack(base_model, tokenizer, datasets: dict, tasks: Sequence[SeedTask], settings: ScoreSettings,
                device: torch.device, options: EngineOptions, sizes: SizeCache,
                stats: dict | None = None, prepared: Sequence | None = None) -> Trained:
    """Models of different pruned sets (and datasets) trained together in one masked stack."""
    splits = [split_halves(datasets[t.dataset][1], t.seed) for t in tasks]
    stack = StackedMLM.masked(base_model, [t.pruned for t in tasks], device)
    seconds = adjust_stacked(stack, tokenizer, task_jobs(datasets, tasks), settings, options, stats, prepared)
    start_features = time.perf_counter()
    feats = features_stacked(stack, [[datasets[t.dataset][0][i] for i in split[1]] for t, split in zip(tasks, splits)],
                             tokenizer.pad_token_id, settings, options)
    del stack
    if stats is not None:
        stats["features_seconds"] = stats.get("features_seconds", 0.0) + time.perf_counter() - start_features
        stats["adjust_seconds"] = stats.get("adjust_seconds", 0.0) + seconds
    return Trained(feats, [datasets[t.dataset][1][split[1]] for t, split in zip(tasks, splits)],
                    [t.seed for t in tasks], seconds, [tuple(t.pruned) for t in tasks], sizes)


def svm_score(trained: Trained, k: int, settings: ScoreSettings, device: torch.device) -> SeedScore:
    x, y, seed = trained.features[k], trained.labels[k], trained.seeds[k]
    if device.type == "cuda":  # a side stream: copying a Gram matrix back must not wait for the training
        with torch.cuda.stream(torch.cuda.Stream(device)):
            f1 = svm_f1(x, y, settings.n_folds, seed, device)
    else:
        f1 = svm_f1(x, y, settings.n_folds, seed, device)
    n_params, size = trained.sizes(trained.pruned[k])  # a new pruned set is measured here, off the GPU's path
    return SeedScore(f1=f1, adjust_seconds=trained.adjust_seconds, n_params=n_params, size_bytes=size,
                     device=str(device.type))


@dataclass(frozen=True)
class EngineStages:
    """The engine's stages, the real ones by default: `train_group` (one pruned set's seeds),
    `train_pack` (a masked pack) and `svm` (one trained model's SVM and SeedScore). Where a caller (a
    test) watches or replaces a stage, it passes its own to `BatchedExecutor` or the functions below."""

    train_group: Callable[..., Trained] = train_group
    train_pack: Callable[..., Trained] = train_pack
    svm: Callable[[Trained, int, ScoreSettings, torch.device], SeedScore] = svm_score


ENGINE = EngineStages()


def score_seeds_batched(base_model, tokenizer, ids: list[list[int]], labels: np.ndarray, pruned: Iterable[Head],
                        seeds: Sequence[int], settings: ScoreSettings, device: torch.device | str,
                        options: EngineOptions = EngineOptions(), stats: dict | None = None,
                        stages: EngineStages = ENGINE) -> list[SeedScore]:
    """PRUN_ADJ_EVAL of one pruned set on one dataset for several seeds, trained together.

    Same splits, batch orders, masking, loss, schedules and AdamWs as `scoring.score_seed` per seed
    (see the module docstring for what differs: dropout streams, bf16 on CUDA). Every seed's
    `adjust_seconds` is the **shared** wall time of the group's adjusting stage (all seeds at once),
    not a per-seed time. Returns one SeedScore per seed, in order. `base_model` is not modified.
    `stats`, if given, accumulates "tokens" and "steps" (training), "adjust_seconds",
    "features_seconds" and "svm_seconds" (wall times of the whole group)."""
    device = torch.device(device) if not isinstance(device, torch.device) else device
    seeds = [int(s) for s in seeds]
    trained = stages.train_group(base_model, tokenizer, ids, labels, pruned, seeds, settings, device, options, stats)
    return svm_scores(trained, settings, device, options, stats, stages.svm)


def score_pack(base_model, tokenizer, datasets: dict[str, tuple[list[list[int]], np.ndarray]],
               tasks: Sequence[SeedTask], settings: ScoreSettings, device: torch.device | str,
               options: EngineOptions = EngineOptions(), stats: dict | None = None,
               sizes: SizeCache | None = None, stages: EngineStages = ENGINE) -> list[SeedScore]:
    """PRUN_ADJ_EVAL of several (pruned set, dataset, seed) tasks trained together in one masked
    stack (`StackedMLM.masked`). Each model computes what `score_seeds_batched` computes for its
    task; every `adjust_seconds` is the pack's shared wall time. `datasets`: name -> (ids, labels)."""
    device = torch.device(device) if not isinstance(device, torch.device) else device
    trained = stages.train_pack(base_model, tokenizer, datasets, list(tasks), settings, device, options,
                                sizes or SizeCache(base_model), stats)
    return svm_scores(trained, settings, device, options, stats, stages.svm)


def svm_scores(trained: Trained, settings: ScoreSettings, device: torch.device, options: EngineOptions,
               stats: dict | None, svm: Callable[[Trained, int, ScoreSettings, torch.device], SeedScore] = svm_score
               ) -> list[SeedScore]:
    start = time.perf_counter()
    n = len(trained.seeds)
    if options.svm_workers > 1 and n > 1:
        with ThreadPoolExecutor(min(options.svm_workers, n)) as pool:
            scores = list(pool.map(lambda k: svm(trained, k, settings, device), range(n)))
    else:
        scores = [svm(trained, k, settings, device) for k in range(n)]
    if stats is not None:
        stats["svm_seconds"] = stats.get("svm_seconds", 0.0) + time.perf_counter() - start
    return scores
