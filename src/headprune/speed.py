"""Inference speed on the CPU: latency at batch 1 (p50, p95) and throughput at batch 32, one protocol
for the model card (`export`) and the benchmark (`bench/inference.py`).

A forward is any callable `forward(input_ids, attention_mask)`: the PyTorch module that is exported
(`deploy.graph_of`, timed under `torch.inference_mode`) or its `deploy.OnnxModel`. Inputs are
tokenized and padded as `headprune predict` does. `time_calls` is the primitive (seconds per call,
after warm-up calls); `Speed` summarises latency samples on one tweet and throughput samples on a
batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .models import max_length
from .scoring import encode, pad_batch

BATCH_SIZE = 32
# Typical tweets, preprocessed as METHOD.md says (URLs -> someurl, mentions -> someuser, lowercase),
# used where no dataset is at hand (the model card's timing at export).
SAMPLE_TWEETS = (  # the first, of typical length (~25 tokens), is the batch-1 input
    "i am thrilled the king's speech was nominated for best picture. colin firth was nominated for best actor.",
    "someuser big fan of natalie portman since closer",
    "colin firth better win the oscar. ffffffffascinating!",
    "i hate mondays someurl",
    "watching the hobbit again tonight with friends, cannot wait!!! someurl",
    "worst customer service ever, been on hold for an hour someuser",
    "new phone arrived today and the battery already dies by lunch. not impressed",
    "someuser someuser thanks for the follow! have a great weekend",
)

Inputs = tuple[torch.Tensor, torch.Tensor]


def inference_inputs(tokenizer, config, texts: Sequence[str] = SAMPLE_TWEETS, batch_size: int = BATCH_SIZE):
    """((input_ids, mask) of the first text alone, (input_ids, mask) of `batch_size` texts, cycling)."""
    limit = max_length(tokenizer, config)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = [texts[i % len(texts)] for i in range(batch_size)]
    return pad_batch(encode(tokenizer, batch[:1], limit), pad_id), pad_batch(encode(tokenizer, batch, limit), pad_id)


def time_calls(forward: Callable, inputs: Inputs, calls: int, warmup: int = 2) -> list[float]:
    """Seconds of each of `calls` calls of `forward(*inputs)`, after `warmup` untimed calls."""
    from time import perf_counter

    times = []
    with torch.inference_mode():
        for i in range(warmup + calls):
            started = perf_counter()
            forward(*inputs)
            if i >= warmup:
                times.append(perf_counter() - started)
    return times


@dataclass(frozen=True)
class Speed:
    """Latency at batch 1 (median and 95th percentile, ms) and throughput at `batch_size` (texts per
    second of the median batch), with the sample counts behind them."""

    p50_ms: float
    p95_ms: float
    per_second: float
    batch_size: int
    latency_samples: int
    throughput_samples: int

    @classmethod
    def of(cls, latency: Sequence[float], throughput: Sequence[float], batch_size: int = BATCH_SIZE) -> Speed:
        return cls(
            p50_ms=1000 * float(np.percentile(latency, 50)),
            p95_ms=1000 * float(np.percentile(latency, 95)),
            per_second=batch_size / float(np.median(throughput)),
            batch_size=batch_size,
            latency_samples=len(latency),
            throughput_samples=len(throughput),
        )

    def to_json(self) -> dict:
        return asdict(self)


def measure(
    forwards: dict[str, Callable],
    single: Inputs,
    batch: Inputs,
    rounds: int = 5,
    latency_calls: int = 6,
    batch_calls: int = 1,
    budget_s: float | None = None,
) -> dict[str, Speed]:
    """The Speed of each forward, measured side by side: in each round every forward in turn gets
    `latency_calls` timed calls on `single` and `batch_calls` on `batch` (each after one warm-up
    call), so that a change of the machine's load during the measurement touches every forward
    alike. After `budget_s` seconds (if given) no new round starts; at least two rounds run."""
    from time import perf_counter

    latency: dict[str, list[float]] = {name: [] for name in forwards}
    throughput: dict[str, list[float]] = {name: [] for name in forwards}
    started = perf_counter()
    for done in range(rounds):
        if budget_s is not None and done >= 2 and perf_counter() - started > budget_s:
            break
        for name, forward in forwards.items():
            latency[name] += time_calls(forward, single, latency_calls, warmup=1)
            throughput[name] += time_calls(forward, batch, batch_calls, warmup=1)
    size = int(batch[0].shape[0])
    return {name: Speed.of(latency[name], throughput[name], batch_size=size) for name in forwards}


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the system has none), recorded beside timings."""
    import os

    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None
