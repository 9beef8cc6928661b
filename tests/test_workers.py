"""The reference loop in worker processes (`run.workers`): the same scores as in this process with
as many threads per task, whatever the number of workers; store keys unchanged."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from headprune.base import load_base
from headprune.data import load_dataset
from headprune.executors import InProcessExecutor, WorkerProcesses
from headprune.executors.local import auto_workers
from headprune.scoring import encode, run_task
from headprune.settings import ScoreSettings
from headprune.tasks import EvalContext, SeedTask

SETTINGS = ScoreSettings(epochs=1, n_folds=5, batch_size=8, learning_rate=1e-3)


@pytest.fixture(scope="module")
def lively_dir(tmp_path_factory) -> Path:
    """A tiny random BERT whose features (hence F1s) move with its training: weights at 10x BERT's
    initial scale, dropout on (seeded by the task, as every draw of the reference loop)."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from headprune.models import resolve_model_path

    directory = tmp_path_factory.mktemp("lively")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(3)
    BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, hidden_size=32,
                               num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                               max_position_embeddings=130, initializer_range=0.2)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def context(lively_dir, air_data_dir) -> EvalContext:
    loader = functools.partial(load_base, str(lively_dir), None)
    base = loader()
    ds = load_dataset("person", data_dir=air_data_dir)
    rows = [i for c in (0, 1) for i in np.flatnonzero(ds.labels == c)[:30]]
    data = (encode(base.tokenizer, [ds.texts[i] for i in rows], 64), ds.labels[rows])
    return EvalContext(base.model, base.tokenizer, {"person": data}, SETTINGS, "cpu", score=run_task,
                       base_loader=loader)


TASKS = [SeedTask((), "person", 1), SeedTask(((0, 1), (1, 2)), "person", 1), SeedTask((), "person", 2),
         SeedTask(((1, 0), (1, 1), (1, 2), (1, 3)), "person", 3)]


def essentials(results) -> dict:
    """What a score is, without its wall time."""
    return {task: (score.f1, score.n_params, score.size_bytes, score.device) for task, score in results}


def test_workers_give_the_scores_of_a_sequential_run_with_one_thread(context):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sequential = essentials(InProcessExecutor().run(context, TASKS))
    finally:
        torch.set_num_threads(before)
    assert len({f1 for f1, *_ in sequential.values()}) > 2  # the scores differ by task: a real comparison
    for workers in (2, 3):
        executor = WorkerProcesses(workers, threads=1)
        try:
            assert essentials(executor.run(context, TASKS)) == sequential, workers
            # The pool lives on: a second batch reuses the workers, and computes the same.
            pool = executor._pool
            assert essentials(executor.run(context, TASKS[:2])) == {t: sequential[t] for t in TASKS[:2]}
            assert executor._pool is pool
        finally:
            executor.close()
    assert executor._pool is None
    assert WorkerProcesses(2).store_entries(context.base_model, "cpu") == {}  # the reference loop's keys


def test_what_cannot_travel_runs_here_on_the_workers_threads(context):
    """A score function defined inside another (a test's stand-in) cannot be sent to a worker, nor
    can a context without a base loader: their tasks run here, on the workers' threads."""
    import dataclasses

    seen = []
    real = context.score

    def spy(ctx, task):
        seen.append(torch.get_num_threads())
        return real(ctx, task)

    executor = WorkerProcesses(2, threads=1)
    before = torch.get_num_threads()
    for here in (dataclasses.replace(context, score=spy), dataclasses.replace(context, score=spy, base_loader=None)):
        seen.clear()
        assert [t for t, _ in executor.run(here, TASKS[:2])] == TASKS[:2]
        assert seen == [1, 1] and torch.get_num_threads() == before and executor._pool is None


def test_auto_workers_one_per_core_as_memory_allows():
    gib = 2**30
    assert auto_workers(22_700_000, cores=2, memory=16 * gib) == 2
    assert auto_workers(22_700_000, cores=64, memory=16 * gib) == 5  # 8 GiB / (0.5 + 1 GiB)
    assert auto_workers(135_000_000, cores=64, memory=8 * gib) == 1
    assert auto_workers(22_700_000, cores=1, memory=0) == 1
