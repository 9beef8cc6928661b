"""PRUN_ADJ_EVAL (Algorithm 4): prune, adjust by continued MLM, extract features, SVM cross-validation.

This module holds the reference computation of one seed's score (`score_seed`); `Scorer` adds the
results store, the executor (in process or Ray) and progress on top of it."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import saved_size
from .data import Dataset, check_enough_per_class, load_dataset, split_halves
from .errors import HeadpruneError, Stopped, past
from .families import family_of
from .models import count_parameters, fingerprint, load_model, max_length
from .settings import ScoreSettings
from .store import ResultStore, SeedScore, pruned_key
from .surgery import original_shape, prune_heads

log = logging.getLogger(__name__)

Head = tuple[int, int]


@dataclass(frozen=True)
class WarmupSettings:
    """Warm-up of a fresh masked-LM head (encoder frozen) on the G1 tweets; METHOD.md, "Model"."""

    steps: int = 300
    batch_size: int = 32
    learning_rate: float = 5e-4
    datasets: tuple[str, ...] = ("G1",)
    seed: int = 0


@dataclass
class ScoreResult:
    """The scores of one pruned model on one dataset, one per seed."""

    dataset: str
    pruned: list[Head]
    seeds: list[int]
    scores: list[float]
    adjust_seconds: list[float]
    n_params: int
    size_bytes: int

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std(self) -> float:
        return float(np.std(self.scores, ddof=1)) if len(self.scores) > 1 else 0.0


# ----------------------------------------------------------------------------- devices and tokens


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise HeadpruneError(f"--device: unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise HeadpruneError(f"--device {device}: CUDA is not available on this machine")
    return resolved


def reproducible(device: torch.device, on: bool = True) -> None:
    """On CUDA: deterministic kernels (a fixed cuBLAS workspace, `torch.use_deterministic_algorithms`,
    warn-only where an operation has none), so that the same configuration and seeds give the same
    numbers on the same GPU; call it before the first CUDA work. On CPU a no-op (already deterministic)."""
    if device.type != "cuda":
        return
    import os

    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)
    # Deterministic mode also fills every new uninitialised tensor (NaN), an extra write of each
    # buffer: a guard for code that reads memory it never wrote, which nothing here does (every
    # batch, index and padding slot is written), so it would only cost bandwidth.
    torch.utils.deterministic.fill_uninitialized_memory = False


def encode(tokenizer, texts: Sequence[str], limit: int) -> list[list[int]]:
    """Token ids of each text (special tokens included), truncated to `limit`."""
    return tokenizer(list(texts), truncation=True, max_length=limit, add_special_tokens=True)["input_ids"]


def _pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ids in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[i, : len(ids)] = 1
    return input_ids, attention


def _module(model: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        model = getattr(model, part)
    return model


def mlm_logits_at(model, hidden: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits for selected hidden vectors (N, hidden) -> (N, vocab)."""
    for path in family_of(model.config).mlm_head:
        hidden = _module(model, path)(hidden)
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


def adjust(model, tokenizer, ids: list[list[int]], settings: ScoreSettings, seed: int, device: torch.device) -> float:
    """Continued MLM pre-training (15% masking, 80/10/10; AdamW, linear decay, no warm-up, no weight
    decay). Returns the seconds it took. Batch order, masking and dropout all take `seed`."""
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
        input_ids, attention = _pad([ids[i] for i in rows], pad_id)
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


def svm_f1(x: np.ndarray, y: np.ndarray, n_folds: int, seed: int) -> float:
    """SVC(class_weight='balanced'), stratified shuffled k-fold CV, mean F1-macro."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.svm import SVC

    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    scores = cross_val_score(SVC(class_weight="balanced"), x, y, cv=folds, scoring="f1_macro")
    return float(np.mean(scores))


def score_seed(
    base_model,
    tokenizer,
    ids: list[list[int]],
    labels: np.ndarray,
    pruned: Iterable[Head],
    seed: int,
    settings: ScoreSettings,
    device: torch.device,
) -> SeedScore:
    """One seed of PRUN_ADJ_EVAL: split, prune, adjust, features, SVM. `base_model` is not modified."""
    finetune_idx, classify_idx = split_halves(labels, seed)
    model = copy.deepcopy(base_model)
    pruned = list(pruned)
    if pruned:
        prune_heads(model, pruned)
    n_params = count_parameters(model)
    size = saved_size(model)
    model.to(device)
    seconds = adjust(model, tokenizer, [ids[i] for i in finetune_idx], settings, seed, device)
    x = features(model, [ids[i] for i in classify_idx], tokenizer.pad_token_id, settings, device)
    f1 = svm_f1(x, labels[classify_idx], settings.n_folds, seed)
    return SeedScore(f1=f1, adjust_seconds=seconds, n_params=n_params, size_bytes=size, device=str(device.type))


# ----------------------------------------------------------------------------- MLM head warm-up


def warm_up_mlm_head(model, tokenizer, texts: Sequence[str], warmup: WarmupSettings, device: torch.device) -> dict:
    """Train a fresh masked-LM head alone (encoder and tied embeddings frozen). Returns its state."""
    from transformers import DataCollatorForLanguageModeling

    family = family_of(model.config)
    torch.manual_seed(warmup.seed)
    head_params = {id(p) for path in family.mlm_head for p in _module(model, path).parameters()}
    embedding_params = {id(p) for p in model.get_input_embeddings().parameters()}
    trainable = [p for p in model.parameters() if id(p) in head_params and id(p) not in embedding_params]
    for p in model.parameters():
        p.requires_grad_(id(p) in {id(t) for t in trainable})
    ids = encode(tokenizer, texts, max_length(tokenizer, model.config))
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=warmup.seed)
    generator = torch.Generator().manual_seed(warmup.seed)
    optimizer = adamw(trainable, warmup.learning_rate)
    model.to(device).train()
    for _ in range(warmup.steps):
        rows = torch.randint(len(ids), (warmup.batch_size,), generator=generator).tolist()
        batch = collator([{"input_ids": ids[i]} for i in rows])
        if not (batch["labels"] != -100).any():
            continue
        loss = masked_lm_loss(
            model, batch["input_ids"].to(device), batch["attention_mask"].to(device), batch["labels"].to(device)
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval().to("cpu")
    # The decoder tied to the (frozen) word embeddings is not the head's to keep: without it the
    # cached head of MiniLM is 0.2 MB instead of 48 MB (small enough to travel with a run).
    embeddings = model.get_input_embeddings().weight.data_ptr()
    return {
        name: t.detach().clone()
        for name, t in model.state_dict().items()
        if name.startswith(family.mlm_head_prefixes) and t.data_ptr() != embeddings
    }


# ----------------------------------------------------------------------------- the base model


@dataclass
class BaseModel:
    """The pretrained masked-LM model every evaluation starts from (CPU copy), and its identity."""

    name: str
    model: nn.Module
    tokenizer: object
    fingerprint: str
    n_layers: int
    n_heads: int
    max_length: int
    warmed_up: bool = False
    info: dict = field(default_factory=dict)

    @property
    def n_total_heads(self) -> int:
        return self.n_layers * self.n_heads


def load_base(
    name: str,
    warmup: WarmupSettings | None = WarmupSettings(),
    data_dir=None,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[str], None] | None = None,
) -> BaseModel:
    """Load the base model; a fresh masked-LM head is warmed up once and cached in `cache_dir`."""
    from safetensors.torch import load_file, save_file

    model, tokenizer = load_model(name)
    info: dict = {"fresh_mlm_head": bool(getattr(model.config, "headprune_fresh_mlm_head", False))}
    warmed = False
    if info["fresh_mlm_head"] and warmup is not None and warmup.steps > 0:
        from .data import expand_datasets
        from .store import make_key

        warm_data = [load_dataset(ds, data_dir=data_dir) for ds in expand_datasets(list(warmup.datasets))]
        # The cached head is named by everything that determines it, the warm-up texts' content included.
        tag = make_key(model=fingerprint(model), warmup=asdict(warmup), data=[d.content_hash for d in warm_data])[:20]
        cache_file = Path(cache_dir) / f"mlm-head-{tag}.safetensors" if cache_dir is not None else None
        if cache_file is not None and cache_file.is_file():
            state = load_file(str(cache_file))
        else:
            if progress:
                progress(f"warming up the fresh masked-LM head ({warmup.steps} steps, encoder frozen)")
            texts = [t for d in warm_data for t in d.texts]
            dev = resolve_device(str(device)) if not isinstance(device, torch.device) else device
            state = warm_up_mlm_head(model, tokenizer, texts, warmup, dev)
            if cache_file is not None:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                save_file({k: v.contiguous() for k, v in state.items()}, str(cache_file))
        model.load_state_dict(state, strict=False)
        model.tie_weights()
        warmed = True
        info["warmup"] = asdict(warmup)
    model.eval()
    n_layers, n_heads = original_shape(model.config)
    return BaseModel(
        name=name,
        model=model,
        tokenizer=tokenizer,
        fingerprint=fingerprint(model),
        n_layers=n_layers,
        n_heads=n_heads,
        max_length=max_length(tokenizer, model.config),
        warmed_up=warmed,
        info=info,
    )


# ----------------------------------------------------------------------------- the scorer


@dataclass(frozen=True)
class SeedTask:
    """One evaluation: a pruned set on a dataset with a seed."""

    pruned: tuple[Head, ...]
    dataset: str
    seed: int


@dataclass
class EvalContext:
    """What a worker needs to run SeedTasks: the base model, the tokenized datasets, the settings."""

    base_model: nn.Module
    tokenizer: object
    datasets: dict[str, tuple[list[list[int]], np.ndarray]]
    settings: ScoreSettings
    device: str = "auto"


def run_task(context: EvalContext, task: SeedTask) -> SeedScore:
    ids, labels = context.datasets[task.dataset]
    return score_seed(
        context.base_model,
        context.tokenizer,
        ids,
        labels,
        task.pruned,
        task.seed,
        context.settings,
        resolve_device(context.device),
    )


class Scorer:
    """Scores pruned models through the results store; only missing per-seed scores are computed.

    `evaluate(requests)` is the batch evaluator of the search layer: [(pruned set, dataset)] ->
    mean F1 over `seeds`."""

    def __init__(
        self,
        base: BaseModel,
        store: ResultStore,
        settings: ScoreSettings = ScoreSettings(),
        seeds: Sequence[int] = (1,),
        data_dir=None,
        text_column: str = "tweet",
        label_column: str = "class",
        device: str = "auto",
        executor=None,
        on_result: Callable[[SeedTask, SeedScore, bool], None] | None = None,
        sources: dict[str, str] | None = None,
        loader: Callable[[str], Dataset] | None = None,
        deadline: float | None = None,
    ):
        from .execute import InProcessExecutor

        self.base = base
        self.store = store
        self.settings = settings
        self.seeds = list(seeds)
        self.data_dir = data_dir
        self.text_column = text_column
        self.label_column = label_column
        self.device = device
        self.executor = executor or InProcessExecutor()
        self.on_result = on_result
        self.sources = dict(sources or {})  # display name -> bundled name or file path
        self.loader = loader  # name -> Dataset, when the caller prepares datasets itself (e.g. capped)
        self.deadline = deadline  # time.monotonic(): past it, start nothing new and raise errors.Stopped
        self._datasets: dict[str, Dataset] = {}
        self._encoded: dict[str, tuple[list[list[int]], np.ndarray]] = {}
        self.settings_key = {**settings.as_dict(), "max_length": min(settings.max_length, base.max_length)}
        tag = getattr(self.executor, "store_tag", None)
        if tag:
            # The batched engine draws other dropout masks (equal only statistically): its scores are
            # kept apart from the reference loop's, whose keys stay as they were.
            self.settings_key["engine"] = tag

    # -------------------------------------------------------------- data
    def dataset(self, name: str) -> Dataset:
        if name not in self._datasets:
            if self.loader is not None:
                ds = self.loader(name)
            else:
                ds = load_dataset(
                    self.sources.get(name, name),
                    text_column=self.text_column,
                    label_column=self.label_column,
                    data_dir=self.data_dir,
                )
            check_enough_per_class(ds, self.settings.n_folds)
            self._datasets[name] = ds
            self._encoded[name] = (encode(self.base.tokenizer, ds.texts, self.settings_key["max_length"]), ds.labels)
        return self._datasets[name]

    def context(self, names: Iterable[str]) -> EvalContext:
        for name in names:
            self.dataset(name)
        return EvalContext(
            self.base.model, self.base.tokenizer, {n: self._encoded[n] for n in names}, self.settings, self.device
        )

    # -------------------------------------------------------------- store
    def key(self, task: SeedTask) -> str:
        return self.store.score_key(
            self.base.fingerprint, task.pruned, self.dataset(task.dataset).content_hash, task.seed, self.settings_key
        )

    def lookup(self, task: SeedTask) -> SeedScore | None:
        return self.store.get_score(self.key(task))

    def tasks_for(
        self, requests: Sequence[tuple[Iterable[Head], str]], seeds: Sequence[int] | None = None
    ) -> list[SeedTask]:
        seeds = self.seeds if seeds is None else list(seeds)
        out: list[SeedTask] = []
        for pruned, name in requests:
            canonical = tuple(sorted((int(l), int(h)) for l, h in pruned))
            out += [SeedTask(canonical, name, s) for s in seeds]
        return out

    def run(self, tasks: Sequence[SeedTask]) -> dict[SeedTask, SeedScore]:
        """Stored scores for every task, computing (and storing at once) only the missing ones."""
        results: dict[SeedTask, SeedScore] = {}
        missing: list[SeedTask] = []
        for task in dict.fromkeys(tasks):
            stored = self.lookup(task)
            if stored is not None:
                results[task] = stored
                if self.on_result:
                    self.on_result(task, stored, True)
            else:
                missing.append(task)
        if missing and past(self.deadline):
            raise Stopped(f"time limit reached; {len(results)} of {len(missing) + len(results)} scores of this "
                          "batch are in the store")
        if missing:
            if hasattr(self.executor, "request_stop"):
                self.executor.stop_requested = False
            # The whole batch goes along (stored tasks included): the batched engine plans which
            # models train together over it, so a resumed run trains the groups an uninterrupted one
            # would (their dropout streams, hence scores, depend on that).
            batch = list(dict.fromkeys(tasks))
            context = self.context(sorted({t.dataset for t in batch}))
            for task, score in self.executor.run(context, missing, batch=batch):
                self.store.put_score(
                    self.key(task),
                    model=self.base.fingerprint,
                    pruned=task.pruned,
                    dataset=task.dataset,
                    dataset_hash=self.dataset(task.dataset).content_hash,
                    seed=task.seed,
                    settings=self.settings_key,
                    score=score,
                )
                results[task] = score
                if self.on_result:
                    self.on_result(task, score, False)
                if past(self.deadline):
                    request = getattr(self.executor, "request_stop", None)
                    if request is None:
                        break
                    request()  # finish what is in flight, then stop
            if len(results) < len(dict.fromkeys(tasks)):
                raise Stopped(f"time limit reached; {len(results)} of {len(dict.fromkeys(tasks))} scores of this "
                              "batch are in the store")
        return results

    def score(self, pruned: Iterable[Head], dataset: str, seeds: Sequence[int] | None = None) -> ScoreResult:
        tasks = self.tasks_for([(pruned, dataset)], seeds)
        results = self.run(tasks)
        scores = [results[t] for t in tasks]
        return ScoreResult(
            dataset=dataset,
            pruned=list(tasks[0].pruned),
            seeds=[t.seed for t in tasks],
            scores=[s.f1 for s in scores],
            adjust_seconds=[s.adjust_seconds for s in scores],
            n_params=scores[0].n_params,
            size_bytes=scores[0].size_bytes,
        )

    def evaluate(self, requests: Sequence[tuple[Iterable[Head], str]]) -> list[float]:
        tasks = self.tasks_for(requests)
        results = self.run(tasks)
        n = len(self.seeds)
        return [float(np.mean([results[t].f1 for t in tasks[i * n : (i + 1) * n]])) for i in range(len(requests))]


__all__ = [
    "BaseModel",
    "EvalContext",
    "ScoreResult",
    "ScoreSettings",
    "Scorer",
    "SeedTask",
    "WarmupSettings",
    "adjust",
    "features",
    "load_base",
    "masked_lm_loss",
    "pruned_key",
    "reproducible",
    "resolve_device",
    "run_task",
    "score_seed",
    "svm_f1",
]
