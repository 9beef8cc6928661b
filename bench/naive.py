"""The naive PRUN_ADJ_EVAL loop: the baseline of bench/engine.py.

Self-contained on purpose (transformers, torch and scikit-learn only, plus headprune's seeded split
so that the same rows are used): one model at a time, fp32, batch 16, the masked-LM loss from
`model(..., labels=...)` (full-vocabulary logits at every position), features in batches of 64,
`SVC(class_weight="balanced")` (RBF, gamma='scale') on the raw features with stratified shuffled
10-fold cross-validation. What it computes is METHOD.md's PRUN_ADJ_EVAL, as `scoring.score_seed`;
it exists to measure how fast the obvious implementation is."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class NaiveTimes:
    """Wall times (seconds) of one naive call, and the real tokens it trained on."""

    adjust: float = 0.0
    features: float = 0.0
    svm: float = 0.0
    tokens: int = 0
    steps: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.adjust + self.features + self.svm


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive_adjust(model, tokenizer, ids, seed: int, device: torch.device, times: NaiveTimes, epochs: int = 4,
                 batch_size: int = 16, lr: float = 2e-5, eps: float = 1e-8, mlm_probability: float = 0.15) -> None:
    from transformers import DataCollatorForLanguageModeling, get_linear_schedule_with_warmup

    _sync(device)
    start = time.perf_counter()
    torch.manual_seed(seed)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=seed)
    order = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(ids) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, eps=eps, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(optimizer, 0, steps_per_epoch * epochs)
    model.train()
    for _ in range(epochs):
        permutation = torch.randperm(len(ids), generator=order).tolist()
        for b in range(steps_per_epoch):
            batch = collator([{"input_ids": ids[i]} for i in permutation[b * batch_size: (b + 1) * batch_size]])
            if not (batch["labels"] != -100).any():
                schedule.step()
                continue
            times.tokens += int(batch["attention_mask"].sum())
            times.steps += 1
            out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                        labels=batch["labels"].to(device))
            out.loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
    model.eval()
    _sync(device)
    times.adjust += time.perf_counter() - start


@torch.no_grad()
def naive_features(model, ids, pad_id: int, device: torch.device, times: NaiveTimes, layers: int = 4,
                   batch_size: int = 64) -> np.ndarray:
    _sync(device)
    start = time.perf_counter()
    model.eval()
    out = []
    for b in range(0, len(ids), batch_size):
        rows = ids[b: b + batch_size]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r)
            attention[i, : len(r)] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention,
                                  output_hidden_states=True).hidden_states
        n = min(layers, len(hidden) - 1)
        tokens = torch.cat(hidden[-n:], dim=-1).float()
        mask = attention.unsqueeze(-1).float()
        out.append(((tokens * mask).sum(1) / mask.sum(1)).cpu().numpy())
    times.features += time.perf_counter() - start
    return np.concatenate(out)


def naive_svm(x: np.ndarray, y: np.ndarray, seed: int, times: NaiveTimes, n_folds: int = 10) -> float:
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.svm import SVC

    start = time.perf_counter()
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    f1 = float(np.mean(cross_val_score(SVC(class_weight="balanced"), x, y, cv=folds, scoring="f1_macro")))
    times.svm += time.perf_counter() - start
    return f1


def naive_score(base_model, tokenizer, ids, labels: np.ndarray, seed: int, device: torch.device,
                epochs: int = 4, n_folds: int = 10) -> tuple[float, NaiveTimes]:
    """One seed of PRUN_ADJ_EVAL on the complete model, the naive way: (F1-macro, times)."""
    from headprune.data import split_halves

    times = NaiveTimes()
    finetune, classify = split_halves(labels, seed)
    model = copy.deepcopy(base_model).to(device)
    naive_adjust(model, tokenizer, [ids[i] for i in finetune], seed, device, times, epochs=epochs)
    x = naive_features(model, [ids[i] for i in classify], tokenizer.pad_token_id, device, times)
    del model
    f1 = naive_svm(x, labels[classify], seed, times, n_folds=n_folds)
    return f1, times
