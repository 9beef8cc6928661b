"""PRUN_ADJ_EVAL (Algorithm 4), the reference computation of one seed's score: prune, adjust by
continued MLM, extract features, SVM cross-validation (`score_seed`; `run_task` for an EvalContext).

The results store, the executors and progress sit on top of it (`scorer.Scorer`); the batched engine
(`engine/`) computes the same thing for many models at once and is tested against this module."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .checkpoint import saved_size
from .data import split_halves
from .devices import resolve_device
from .families import family_of, module_at
from .heads import Head
from .models import count_parameters
from .settings import ScoreSettings
from .surgery import prune_heads
from .tasks import EvalContext, SeedScore, SeedTask


def encode(tokenizer, texts: Sequence[str], limit: int) -> list[list[int]]:
    """Token ids of each text (special tokens included), truncated to `limit`."""
    return tokenizer(list(texts), truncation=True, max_length=limit, add_special_tokens=True)["input_ids"]


def pad_batch(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ids in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[i, : len(ids)] = 1
    return input_ids, attention


def mlm_logits_at(model, hidden: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits for selected hidden vectors (N, hidden) -> (N, vocab)."""
    for path in family_of(model.config).mlm_head:
        hidden = module_at(model, path)(hidden)
    return hidden


def masked_lm_loss(model, input_ids: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The MLM loss with logits computed only at masked positions: the same loss as the full
    logits (cross-entropy ignores the other positions) at a fraction of the vocabulary work."""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention).last_hidden_state
    selected = labels != -100
    logits = mlm_logits_at(model, hidden[selected])
    return nn.functional.cross_entropy(logits.float(), labels[selected])


# ----------------------------------------------------------------------------- the three stages


def adamw(params, lr: float, eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW without weight decay, as the method says. The fused kernel (one pass over every
    tensor) computes the same update as the per-tensor loop and is several times faster on CPU."""
    return torch.optim.AdamW(params, lr=lr, eps=eps, weight_decay=0.0, fused=True)


def adjust(model, tokenizer, ids: list[list[int]], settings: ScoreSettings, seed: int, device: torch.device,
           precision: str = "fp32") -> float:
    """Continued MLM pre-training (15% masking, 80/10/10; AdamW, linear decay, no warm-up, no weight
    decay). Returns the seconds it took. Batch order, masking and dropout all take `seed`.
    `precision` "bf16": forward and backward under bf16 autocast, the weights, gradients, Adam state
    and loss in fp32 (as the batched engine on CUDA)."""
    from transformers import DataCollatorForLanguageModeling, get_linear_schedule_with_warmup

    start = time.perf_counter()
    torch.manual_seed(seed)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=settings.mlm_probability, seed=seed)
    order = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(ids) / settings.batch_size)
    optimizer = adamw(model.parameters(), settings.learning_rate, settings.adam_epsilon)
    schedule = get_linear_schedule_with_warmup(optimizer, 0, steps_per_epoch * settings.epochs)
    model.train()
    for _ in range(settings.epochs):
        permutation = torch.randperm(len(ids), generator=order).tolist()
        for b in range(steps_per_epoch):
            rows = [{"input_ids": ids[i]} for i in permutation[b * settings.batch_size : (b + 1) * settings.batch_size]]
            batch = collator(rows)
            labels = batch["labels"]
            if not (labels != -100).any():
                schedule.step()  # nothing masked in this batch: no loss, but the schedule advances
                continue
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = masked_lm_loss(
                    model, batch["input_ids"].to(device), batch["attention_mask"].to(device), labels.to(device)
                )
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
    model.eval()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


@torch.no_grad()
def features(
    model, ids: list[list[int]], pad_id: int, settings: ScoreSettings, device: torch.device, batch_size: int = 64
) -> np.ndarray:
    """Tweet vectors: concatenate the last min(4, layers) layers' outputs per token, then average
    over the non-padding tokens (special tokens included)."""
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[np.ndarray | None] = [None] * len(ids)
    for b in range(0, len(order), batch_size):
        rows = order[b : b + batch_size]
        input_ids, attention = pad_batch([ids[i] for i in rows], pad_id)
        input_ids, attention = input_ids.to(device), attention.to(device)
        hidden = model.base_model(
            input_ids=input_ids, attention_mask=attention, output_hidden_states=True
        ).hidden_states
        n = min(settings.feature_layers, len(hidden) - 1)
        tokens = torch.cat(hidden[-n:], dim=-1).float()
        mask = attention.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(1) / mask.sum(1)
        for i, vector in zip(rows, pooled.cpu().numpy()):
            out[i] = vector
    return np.stack(out)  # type: ignore[arg-type]


def svm_f1(x: np.ndarray, y: np.ndarray, n_folds: int, seed: int, device: torch.device | str = "cpu") -> float:
    """Mean F1-macro of `SVC(class_weight="balanced")` (RBF kernel, gamma="scale") over stratified
    shuffled k-fold CV (StratifiedKFold(n_folds, shuffle=True, random_state=seed)), computed from
    one Gram matrix: the squared distances once (float64, on `device`), then per fold the RBF kernel
    exp(-gamma * ||a - b||^2) with that fold's gamma as sklearn's "scale" (1 / (n_features *
    X_train.var())) and `SVC(kernel="precomputed", class_weight="balanced")`. The same decision
    function as libsvm's own RBF kernel, so the same F1 (tests/test_scoring.py), at a fraction of the
    time on large datasets: libsvm recomputes kernel rows from the features in every fold."""
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.svm import SVC

    x64 = np.ascontiguousarray(x, dtype=np.float64)
    y = np.asarray(y)
    points = torch.from_numpy(x64).to(device)
    squares = (points * points).sum(1)
    distances = (squares.unsqueeze(1) + squares.unsqueeze(0)) - 2.0 * (points @ points.T)
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    scores = []
    for train, test in folds.split(x64, y):
        variance = x64[train].var()
        gamma = 1.0 / (x64.shape[1] * variance) if variance != 0 else 1.0
        train_t = torch.from_numpy(train).to(points.device)
        test_t = torch.from_numpy(test).to(points.device)
        rows = distances.index_select(1, train_t)
        k_train = torch.exp(-gamma * rows.index_select(0, train_t)).cpu().numpy()
        k_test = torch.exp(-gamma * rows.index_select(0, test_t)).cpu().numpy()
        svc = SVC(kernel="precomputed", class_weight="balanced").fit(k_train, y[train])
        scores.append(f1_score(y[test], svc.predict(k_test), average="macro"))
    return float(np.mean(scores))


@dataclass(frozen=True)
class Stages:
    """The three stages of one seed's score (Algorithm 4), the reference ones by default: `adjust`
    (continued MLM, returns its seconds), `features` (tweet vectors), `classify` (the SVM's mean
    F1). Where a caller (a test) watches or replaces a stage, it passes its own `Stages`."""

    adjust: Callable[..., float] = adjust
    features: Callable[..., np.ndarray] = features
    classify: Callable[..., float] = svm_f1


REFERENCE = Stages()


def pruned_copy(base_model, pruned: Iterable[Head]):
    """A physically pruned copy of `base_model` (which is not modified)."""
    model = copy.deepcopy(base_model)
    pruned = list(pruned)
    if pruned:
        prune_heads(model, pruned)
    return model


def adjust_seconds(base_model, tokenizer, ids: list[list[int]], labels: np.ndarray, pruned: Iterable[Head],
                   seed: int, settings: ScoreSettings, device: torch.device, precision: str = "fp32") -> float:
    """What one finetuning of this pruned model costs on `device` (Table 14): the seconds of the
    adjusting stage of `score_seed` alone (the same split, pruning and training), without features
    or SVM."""
    finetune_idx, _ = split_halves(labels, seed)
    model = pruned_copy(base_model, pruned).to(device)
    return adjust(model, tokenizer, [ids[i] for i in finetune_idx], settings, seed, device, precision)


def score_seed(
    base_model,
    tokenizer,
    ids: list[list[int]],
    labels: np.ndarray,
    pruned: Iterable[Head],
    seed: int,
    settings: ScoreSettings,
    device: torch.device,
    precision: str = "fp32",
    stages: Stages = REFERENCE,
) -> SeedScore:
    """One seed of PRUN_ADJ_EVAL: split, prune, adjust (`precision`: see `adjust`), features (fp32),
    SVM, each by `stages`. `base_model` is not modified."""
    finetune_idx, classify_idx = split_halves(labels, seed)
    model = pruned_copy(base_model, pruned)
    n_params = count_parameters(model)
    size = saved_size(model)
    model.to(device)
    seconds = stages.adjust(model, tokenizer, [ids[i] for i in finetune_idx], settings, seed, device, precision)
    x = stages.features(model, [ids[i] for i in classify_idx], tokenizer.pad_token_id, settings, device)
    f1 = stages.classify(x, labels[classify_idx], settings.n_folds, seed)
    return SeedScore(f1=f1, adjust_seconds=seconds, n_params=n_params, size_bytes=size, device=str(device.type))


def run_task(context: EvalContext, task: SeedTask) -> SeedScore:
    """One SeedTask of `context` by the reference loop (the default `EvalContext.score`)."""
    ids, labels = context.datasets[task.dataset]
    device = context.device if isinstance(context.device, torch.device) else resolve_device(str(context.device))
    return score_seed(context.base_model, context.tokenizer, ids, labels, task.pruned, task.seed, context.settings,
                      device, context.precision)


def time_task(context: EvalContext, task: SeedTask) -> float:
    """The adjusting seconds of one SeedTask of `context`, the model trained alone (`adjust_seconds`)."""
    ids, labels = context.datasets[task.dataset]
    device = context.device if isinstance(context.device, torch.device) else resolve_device(str(context.device))
    return adjust_seconds(context.base_model, context.tokenizer, ids, labels, task.pruned, task.seed, context.settings,
                          device, context.precision)


__all__ = ["REFERENCE", "Stages", "adjust", "adjust_seconds", "features", "masked_lm_loss", "pad_batch",
           "pruned_copy", "run_task", "score_seed", "svm_f1", "time_task"]
