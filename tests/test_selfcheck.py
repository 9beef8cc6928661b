"""The batched engine cannot strand a user: `run.engine = "auto"` on CUDA runs the engine's
self-check first and falls back to the reference loop, in one line, when the engine raises or
disagrees with the reference loop. Everything here runs on the CPU: the failures are injected."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import headprune.engine.selfcheck as selfcheck
import headprune.executors as executors
from headprune.config import from_dict
from headprune.engine import BatchedExecutor
from headprune.engine.stages import adjust_stacked, features_stacked
from headprune.executors import checked_engine, make_executor
from headprune.executors.local import ReferenceLoop
from headprune.models import resolve_model_path

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    """A tiny random BertForMaskedLM (dropout on, as a real checkpoint) and the MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, hidden_size=32,
                                       num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                       max_position_embeddings=130, initializer_range=0.2))
    return model.eval(), tokenizer


def raising(*args, **kwargs):
    raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")


def disagreeing(stack, ids, *args, **kwargs):
    """The engine's features, one model's slightly off (as a wrong row or mask would leave them)."""
    out = real_features_stacked(stack, ids, *args, **kwargs)
    out[1] = out[1] * 1.2
    return out


def not_training(stack, *args, **kwargs):
    """An engine whose training does nothing (a broken optimizer step)."""
    return 0.0


real_features_stacked = features_stacked


def test_self_check_passes_on_the_engine_as_it_is(tiny):
    model, tokenizer = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert selfcheck.self_check(model, tokenizer, CPU) is None
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the base model is untouched
    assert model.config.hidden_dropout_prob > 0  # its dropout too (the check trains a copy without)


@pytest.mark.parametrize(("where", "fake", "says"), [
    ("train", raising, "the engine raised RuntimeError: CUDA error: an illegal memory access"),
    ("read", disagreeing, "model 1: the engine's features differ from the reference loop's"),
    ("train", not_training, "model 0: the engine's training moved the features 1 (relative)"),
])
def test_self_check_reports_an_engine_that_raises_or_disagrees(tiny, where, fake, says):
    model, tokenizer = tiny
    problem = selfcheck.self_check(model, tokenizer, CPU, **{where: fake})
    assert problem is not None and problem.startswith(says), problem
    assert "\n" not in problem


def test_self_check_reports_non_finite_weights(tiny):
    model, tokenizer = tiny

    def diverging(stack, *args, **kwargs):
        seconds = adjust_stacked(stack, *args, **kwargs)
        with torch.no_grad():
            next(iter(stack.params.values()))[0].fill_(float("nan"))  # as a NaN loss leaves them
        return seconds

    assert selfcheck.self_check(model, tokenizer, CPU, train=diverging) == "the engine's trained weights are not finite"


@pytest.mark.parametrize("engine_fails", [False, True])
def test_auto_on_cuda_falls_back_to_the_reference_loop_in_one_line(tiny, monkeypatch, engine_fails):
    """auto on CUDA (here pretended, the device being environment: `batched_engine` says the engine
    would run) checks the engine: a failure gives one line and a configuration that says "reference"
    (executor, departures)."""
    model, tokenizer = tiny
    monkeypatch.setattr(executors, "batched_engine", lambda config, device=None: config.run.engine != "reference")
    check = functools.partial(selfcheck.self_check, train=raising) if engine_fails else selfcheck.self_check
    lines: list[str] = []
    config = from_dict({"run": {"engine": "auto"}})
    checked = checked_engine(config, model, tokenizer, 64, CPU, lines.append, check)
    if engine_fails:
        assert checked.run.engine == "reference" and config.run.engine == "auto"
        assert len(lines) == 1 and "\n" not in lines[0]
        assert lines[0].startswith("the batched engine failed its self-check on cpu (the engine raised RuntimeError")
        assert lines[0].endswith("using the reference loop (run.engine = \"batched\" forces the engine)")
        assert isinstance(make_executor(checked), ReferenceLoop)
    else:
        assert checked is config and lines == []
        assert isinstance(make_executor(checked), BatchedExecutor)


@pytest.mark.parametrize("settings", [{"engine": "batched"}, {"engine": "reference"}, {"engine": "auto"},
                                      {"engine": "auto", "executor": "ray"}])
def test_no_self_check_where_nothing_is_to_be_checked(tiny, settings):
    """"batched" forces the engine unchecked; "reference" and auto on a CPU do not use it; on Ray
    the workers' devices are not known here."""
    model, tokenizer = tiny
    calls = []
    config = from_dict({"run": settings})
    assert checked_engine(config, model, tokenizer, 64, CPU, print,
                          lambda *args, **kwargs: calls.append(args) or "no") is config
    assert calls == []


def test_the_check_rows_vary_in_length(tiny):
    _, tokenizer = tiny
    lengths = {len(r) for r in selfcheck.check_rows(tokenizer, 64)}
    assert len(lengths) > 5 and np.isclose(len(selfcheck.check_rows(tokenizer, 64)), selfcheck.ROWS)
