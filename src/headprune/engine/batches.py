"""Each model's batches (its seed's order and masking) and the ticks of N models in the flat layout."""

from __future__ import annotations

import math
import queue
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..settings import ScoreSettings
from .optim import StackedAdamW


@dataclass
class Step:
    """One tick of N models in the *flat layout*: each model's real tokens (its rows one after the
    other) on one axis of T positions, so the linear layers do no work on padding; attention gathers
    them into rows of L (`to_padded`) and back (`to_flat`)."""

    ids: torch.Tensor  # (N, T) token ids (pad id after a model's tokens)
    positions: torch.Tensor  # (N, T) position ids, as the model family computes them per row
    to_padded: torch.Tensor  # (N, B*L) flat index of row slot (r, c) (0 for a slot with no token)
    to_flat: torch.Tensor  # (N, T) row slot r*L + c of flat token t (0 for padding)
    attention: torch.Tensor  # (N, B, L) 1 = a real token of that row
    index: torch.Tensor  # (N, M) flat positions of the masked tokens
    targets: torch.Tensor  # (N, M)
    weights: torch.Tensor  # (N, M)
    scalars: torch.Tensor  # (3, N) on the host: active, learning rate, step number (StackedAdamW.scalars)
    tokens: int  # real (non-padding) tokens in the step

    def _map(self, f) -> Step:  # the scalars stay on the host (the optimizer reads them there)
        return Step(*(f(getattr(self, name)) for name in _STEP_TENSORS), self.scalars, self.tokens)

    def to(self, device: torch.device) -> Step:
        return self if device.type == "cpu" else self._map(lambda t: t.to(device, non_blocking=True))

    def pin(self) -> Step:
        return self._map(lambda t: t.pin_memory())


_STEP_TENSORS = ("ids", "positions", "to_padded", "to_flat", "attention", "index", "targets", "weights")


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, -(-value // multiple) * multiple)


class FastMasking:
    """`DataCollatorForLanguageModeling(tokenizer, mlm_probability, seed=seed)` on rows of token ids,
    without its per-row Python (~1 ms a batch, most of the cost of drawing batches): the same right
    padding, the same rule (an id of `tokenizer.all_special_ids` is never masked), the same
    generator, calls, shapes and probabilities in the same order, hence the same batches.
    `job_batches` uses it only for a tokenizer on which `fast_masking_matches` has checked it
    against the real collator (another transformers version, left padding...: the real one runs)."""

    def __init__(self, tokenizer, mlm_probability: float, seed: int):
        from transformers import DataCollatorForLanguageModeling

        real = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=seed)
        self.mlm_probability = mlm_probability
        self.mask_replace_prob = real.mask_replace_prob
        self.keep_rest = not (real.mask_replace_prob == 1 or real.random_replace_prob == 0)
        self.random_scaled = real.random_replace_prob / (1 - real.mask_replace_prob) if self.keep_rest else 0.0
        self.generator = torch.Generator().manual_seed(seed)
        self.special = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
        self.pad_id = tokenizer.pad_token_id
        self.mask_id = tokenizer.convert_tokens_to_ids(tokenizer.mask_token)
        self.vocab = len(tokenizer)

    def __call__(self, rows: Sequence[list[int]]) -> dict:
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            attention[i, : len(r)] = 1
        special = torch.from_numpy(np.isin(ids, self.special))
        inputs = torch.from_numpy(ids)
        labels = inputs.clone()
        probability = torch.full(labels.shape, self.mlm_probability)
        probability.masked_fill_(special, value=0.0)
        masked = torch.bernoulli(probability, generator=self.generator).bool()
        labels[~masked] = -100
        replaced = torch.bernoulli(torch.full(labels.shape, self.mask_replace_prob), generator=self.generator).bool()
        replaced &= masked
        inputs[replaced] = self.mask_id
        if self.keep_rest:
            chosen = torch.bernoulli(torch.full(labels.shape, self.random_scaled), generator=self.generator).bool()
            chosen &= masked & ~replaced
            words = torch.randint(self.vocab, labels.shape, dtype=torch.long, generator=self.generator)
            inputs[chosen] = words[chosen]
        return {"input_ids": inputs, "attention_mask": torch.from_numpy(attention), "labels": labels}


# Verdicts of `fast_masking_matches`, per live tokenizer object (weak keys: an id() could be reused).
_FAST_MASKING_OK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fast_masking_matches(tokenizer, mlm_probability: float) -> bool:
    """Whether `FastMasking` draws exactly the real collator's batches for this tokenizer (checked
    once per tokenizer on 40 batches of random ids, special ids and lengths included)."""
    verdicts = _FAST_MASKING_OK.setdefault(tokenizer, {})
    key = float(mlm_probability)
    if key not in verdicts:
        from transformers import DataCollatorForLanguageModeling

        rng = np.random.default_rng(0)
        special = sorted(set(tokenizer.all_special_ids))
        real = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=7)
        fast = FastMasking(tokenizer, mlm_probability, seed=7)
        same = True
        for _ in range(40):
            rows = []
            for _ in range(int(rng.integers(1, 17))):
                row = rng.integers(0, len(tokenizer), size=int(rng.integers(2, 60))).tolist()
                row[int(rng.integers(0, len(row)))] = int(rng.choice(special))
                rows.append(row)
            a, b = real([{"input_ids": r} for r in rows]), fast(rows)
            if not all(torch.equal(a[k], b[k]) for k in ("input_ids", "attention_mask", "labels")):
                same = False
                break
        verdicts[key] = same
    return verdicts[key]


def job_batches(tokenizer, ids: list[list[int]], seed: int, settings: ScoreSettings
                ) -> Iterator[tuple[dict, float] | None]:
    """One model's batches, exactly as `scoring.adjust` draws them: (collated batch, learning rate),
    or None for a batch with no masked token (skipped: the schedule advances, the optimizer not)."""
    from transformers import DataCollatorForLanguageModeling

    if fast_masking_matches(tokenizer, settings.mlm_probability):
        collate = FastMasking(tokenizer, settings.mlm_probability, seed)
    else:
        real = DataCollatorForLanguageModeling(tokenizer, mlm_probability=settings.mlm_probability, seed=seed)

        def collate(rows):
            return real([{"input_ids": r} for r in rows])
    order = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(ids) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    step = 0
    for _ in range(settings.epochs):
        permutation = torch.randperm(len(ids), generator=order).tolist()
        for b in range(steps_per_epoch):
            batch = collate([ids[i] for i in permutation[b * settings.batch_size: (b + 1) * settings.batch_size]])
            lr = settings.learning_rate * max(0.0, float(total - step) / float(max(1, total)))
            step += 1
            yield None if not (batch["labels"] != -100).any() else (batch, lr)


@dataclass(frozen=True)
class Batch:
    """One model's collated batch, compactly (what `training_steps` needs, cheap to send between processes):
    masked input ids and attention mask (rows, width), the flat positions (row * width + column) of
    the masked tokens, their original ids, and the learning rate of the step."""

    input_ids: np.ndarray  # int32 (rows, width)
    attention: np.ndarray  # uint8 (rows, width)
    positions: np.ndarray  # int64 (masked,)
    targets: np.ndarray  # int64 (masked,)
    lr: float


def job_stream(tokenizer, ids: list[list[int]], seed: int, settings: ScoreSettings) -> Iterator[Batch | None]:
    """`job_batches` as compact `Batch`es (None: a batch with no masked token)."""
    for item in job_batches(tokenizer, ids, seed, settings):
        if item is None:
            yield None
            continue
        batch, lr = item
        labels = batch["labels"]
        r, c = (labels != -100).nonzero(as_tuple=True)
        yield Batch(batch["input_ids"].numpy().astype(np.int32), batch["attention_mask"].numpy().astype(np.uint8),
                    (r * labels.shape[1] + c).numpy(), labels[r, c].numpy(), lr)


_PREP_WORKER: dict = {}


def _prep_init(tokenizer) -> None:
    import multiprocessing

    # DataCollatorForLanguageModeling(seed=...) refuses to run outside a process named MainProcess
    # (it expects DataLoader workers); these workers each draw whole, independent job streams.
    multiprocessing.current_process().name = "MainProcess"
    torch.set_num_threads(1)
    _PREP_WORKER["tokenizer"] = tokenizer


def _prep_job(job: tuple[list[list[int]], int, ScoreSettings]) -> list[Batch | None]:
    ids, seed, settings = job
    return list(job_stream(_PREP_WORKER["tokenizer"], ids, seed, settings))


class BatchPreparer:
    """Draws the models' batches (collation and MLM masking, ~2.5 ms of Python per model and step)
    in worker processes, so that a GPU training dozens of models at once is not kept waiting by one
    CPU core. Each job's stream depends only on its rows and seed, so the batches are exactly those
    drawn in-process. `workers=0`: nothing is prepared ahead (drawn lazily, in this process)."""

    def __init__(self, workers: int = 0):
        self.workers = int(workers)
        self._pool = None
        self._tokenizer = None

    def prepare(self, tokenizer, jobs: Sequence[tuple[list[list[int]], int]], settings: ScoreSettings) -> list:
        """One source per job, for `adjust_stacked(prepared=...)`: a Future of its batch list, or None."""
        if self.workers <= 0:
            return [None] * len(jobs)
        pool = self._pool_for(tokenizer)
        return [pool.submit(_prep_job, (ids, seed, settings)) for ids, seed in jobs]

    def _pool_for(self, tokenizer):
        if self._pool is None or self._tokenizer is not tokenizer:
            self.close()
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_prep_init, initargs=(tokenizer,))
            self._tokenizer = tokenizer
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def training_steps(tokenizer, jobs: Sequence[tuple[list[list[int]], int]], settings: ScoreSettings,
           optimizer: StackedAdamW, width_multiple: int, prepared: Sequence | None = None,
           position_pad: int | None = None) -> Iterator[Step]:
    """The stacked steps of N jobs (ids, seed): tick t holds every job's t-th batch. `prepared`: per
    job, a Future of its batches (`BatchPreparer`) or None (drawn here). `position_pad`: the model's
    padding index for RoBERTa-like position ids (None: BERT's absolute positions)."""
    pad_id = tokenizer.pad_token_id
    prepared = list(prepared or [None] * len(jobs))
    n, rows = len(jobs), settings.batch_size
    # A job's batches come from its worker's list once that is ready; until then they are drawn
    # here (the same stream), so the first ticks need not wait for every worker.
    local: list[Iterator | None] = [None] * n
    remote: list[Iterator | None] = [None] * n
    drawn = [0] * n

    def draw(j: int) -> Batch | None:
        if remote[j] is None and prepared[j] is not None and prepared[j].done():
            remote[j] = iter(prepared[j].result()[drawn[j]:])
            local[j] = None
        if remote[j] is not None:
            return next(remote[j])
        if local[j] is None:
            ids, seed = jobs[j]
            local[j] = job_stream(tokenizer, ids, seed, settings)
        item = next(local[j])
        drawn[j] += 1
        return item

    finished = [False] * n
    while True:
        items: list[Batch | None] = []
        for j in range(n):
            item = None
            if not finished[j]:
                try:
                    item = draw(j)
                except StopIteration:
                    finished[j] = True
            items.append(item)
        if all(finished):
            return
        active = [item is not None for item in items]
        if not any(active):
            continue  # every model skips this batch (no optimizer step anywhere)
        width = _round_up(max(item.input_ids.shape[1] for item in items if item is not None), width_multiple)
        yield _flat_step(items, n, rows, width, pad_id, position_pad, width_multiple,
                         optimizer.scalars(active, lrs_of(items)))


def lrs_of(items: Sequence[Batch | None]) -> list[float]:
    return [0.0 if item is None else item.lr for item in items]


def _flat_rows(input_ids: np.ndarray, attention: np.ndarray, position_pad: int | None) -> tuple:
    """One model's right-padded rows (B, W) in the flat layout: (lengths, starts, row, col, ids,
    positions) with one entry per real token for the last four."""
    lengths = attention.sum(1).astype(np.int64)  # right-padded rows: real tokens come first
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    row = np.repeat(np.arange(len(lengths)), lengths)
    col = np.arange(int(lengths.sum())) - np.repeat(starts, lengths)
    ids = input_ids[row, col].astype(np.int64)
    if position_pad is not None:  # as transformers: cumsum of non-pad ids in the row, + padding_idx
        real = (input_ids != position_pad).astype(np.int64)
        positions = ((np.cumsum(real, axis=1) * real) + position_pad)[row, col]
    else:
        positions = col
    return lengths, starts, row, col, ids, positions


def _flat_layout(parts: Sequence[tuple | None], attentions: Sequence[np.ndarray | None], n: int, rows: int,
                 width: int, pad_id: int, position_pad: int | None, multiple: int) -> tuple:
    """N models' `_flat_rows` on common axes: (ids, positions, to_padded, to_flat, attention, tokens)."""
    t = _round_up(max([len(part[4]) for part in parts if part is not None] + [1]), multiple)
    ids = np.full((n, t), pad_id, dtype=np.int64)
    positions = np.full((n, t), 0 if position_pad is None else position_pad, dtype=np.int64)
    to_padded = np.zeros((n, rows * width), dtype=np.int64)
    to_flat = np.zeros((n, t), dtype=np.int64)
    attention = np.zeros((n, rows, width), dtype=np.int64)
    attention[:, :, 0] = 1  # dummy rows attend to one slot: no fully masked row, no loss
    tokens = 0
    for j, (part, mask) in enumerate(zip(parts, attentions)):
        if part is None:
            continue
        lengths, _, row, col, flat_ids, flat_positions = part
        k = len(flat_ids)
        tokens += k
        ids[j, :k] = flat_ids
        positions[j, :k] = flat_positions
        slots = row * width + col
        to_padded[j, slots] = np.arange(k)
        to_flat[j, :k] = slots
        attention[j, :len(lengths), :] = 0
        attention[j, :len(lengths), : mask.shape[1]] = mask
    return ids, positions, to_padded, to_flat, attention, tokens


def _flat_step(items: Sequence[Batch | None], n: int, rows: int, width: int, pad_id: int, position_pad: int | None,
               multiple: int, scalars: torch.Tensor) -> Step:
    """Lay N models' batches out flat (see `Step`). `pad_id`: the tokenizer's; `position_pad`: the
    model's padding index of RoBERTa-like position ids, or None for absolute positions."""
    parts = [None if item is None else _flat_rows(item.input_ids, item.attention, position_pad) for item in items]
    ids, positions, to_padded, to_flat, attention, tokens = _flat_layout(
        parts, [None if item is None else item.attention for item in items], n, rows, width, pad_id, position_pad,
        multiple)
    masked_at: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for item, part in zip(items, parts):
        if part is None:
            masked_at.append(np.zeros(0, dtype=np.int64))
            labels.append(np.zeros(0, dtype=np.int64))
            continue
        w = item.input_ids.shape[1]
        r, c = item.positions // w, item.positions % w
        masked_at.append(part[1][r] + c)
        labels.append(item.targets)
    m = _round_up(max(len(x) for x in masked_at), 8)
    index = np.zeros((n, m), dtype=np.int64)
    targets = np.full((n, m), -100, dtype=np.int64)
    weights = np.zeros((n, m), dtype=np.float32)
    for j, (at, lab) in enumerate(zip(masked_at, labels)):
        if len(at):
            index[j, : len(at)] = at
            targets[j, : len(at)] = lab
            weights[j, : len(at)] = 1.0 / len(at)
    return Step(*(torch.from_numpy(a) for a in (ids, positions, to_padded, to_flat, attention, index, targets,
                                                   weights)), scalars, tokens)


def flat_rows_step(rows_per_model: Sequence[Sequence[list[int]]], pad_id: int, position_pad: int | None,
                   multiple: int) -> Step:
    """Unmasked rows of N models (token id lists; a model may have none) in the flat layout, for
    inference: a `Step` with no masked tokens and no optimizer scalars."""
    n = len(rows_per_model)
    rows = max([len(r) for r in rows_per_model] + [1])
    width = _round_up(max([len(row) for r in rows_per_model for row in r] + [1]), multiple)
    parts, attentions = [], []
    for model_rows in rows_per_model:
        if not model_rows:
            parts.append(None)
            attentions.append(None)
            continue
        input_ids = np.full((len(model_rows), width), pad_id, dtype=np.int64)
        attention = np.zeros((len(model_rows), width), dtype=np.int64)
        for r, row in enumerate(model_rows):
            input_ids[r, : len(row)] = row
            attention[r, : len(row)] = 1
        parts.append(_flat_rows(input_ids, attention, position_pad))
        attentions.append(attention)
    ids, positions, to_padded, to_flat, attention, tokens = _flat_layout(
        parts, attentions, n, rows, width, pad_id, position_pad, multiple)
    empty = np.zeros((n, 0), dtype=np.int64)
    return Step(*(torch.from_numpy(a) for a in (ids, positions, to_padded, to_flat, attention, empty, empty,
                                                   empty.astype(np.float32))), None, tokens)


def prefetched(iterator: Iterator, depth: int, transform=None) -> Iterator:
    """Run `iterator` (and `transform` on each item) in a background thread, `depth` items ahead."""
    if depth <= 0:
        yield from (transform(x) if transform else x for x in iterator)
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in iterator:
                item = transform(item) if transform else item
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as err:  # noqa: BLE001 - re-raised in the consumer
            q.put(err)

    thread = threading.Thread(target=work, daemon=True, name="headprune-engine-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
