"""The batched engine's self-check: a tiny pack trained by the engine and by the reference loop on
the user's device, compared, before `run.engine = "auto"` trusts the engine with a run.

The engine has not yet run on a GPU; a user on CUDA must not be stranded by a failure of it. So
before a run picks it automatically, two models of the user's base model (the complete one and one
with a head pruned), dropout off, are trained for a few steps on the same rows by the engine (as a
masked pack) and by `scoring.adjust` one by one, and their features compared: every trained value
finite (a NaN or infinite loss leaves them so), the outputs and how far training moved them within
a tolerance that bf16 rounding keeps but a wrong batch, mask, layout or update does not.
`executors.checked_engine` turns a failed check into one line and the reference loop."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..scoring import adjust, encode, features, pruned_copy
from ..settings import ScoreSettings
from .options import EngineOptions
from .stack import StackedMLM
from .stages import adjust_stacked, features_stacked

# Rows of different lengths (the flat layout's padding and gathering matter), the same every time.
WORDS = ("someuser loved the movie yesterday great acting but the ending was slow and the music too loud "
         "what a day at the game tonight can not wait for the next one").split()
ROWS = 16
# lr 1e-3 for 4 steps moves the features far more than bf16 rounding does (fp32: rounding only).
SETTINGS = ScoreSettings(epochs=1, batch_size=4, learning_rate=1e-3)
# (outputs, training movement): the largest relative difference allowed with bf16 autocast, in fp32.
# Seen on CPU with MiniLM: fp32 2e-4 and 4e-4, bf16 autocast 1.2e-2 and 2.2e-2; an engine that does
# not train moves the features 1.0 away, a wrong row or mask far more.
TOLERANCE = {True: (5e-2, 0.25), False: (5e-3, 5e-2)}


def check_rows(tokenizer, limit: int) -> list[list[int]]:
    texts = [" ".join(WORDS[(3 * i) % len(WORDS):][: 4 + (5 * i) % 17] or WORDS[:5]) for i in range(ROWS)]
    return encode(tokenizer, texts, limit)


def without_dropout(model: nn.Module) -> nn.Module:
    """A copy of `model` with every dropout off (the engine draws other dropout masks by design)."""
    model = copy.deepcopy(model)
    model.config.hidden_dropout_prob = 0.0
    model.config.attention_probs_dropout_prob = 0.0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if hasattr(module, "dropout_prob"):
            module.dropout_prob = 0.0
    return model


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))


def compare(base_model, tokenizer, device: torch.device, options: EngineOptions = EngineOptions(),
            limit: int = 64, train: Callable[..., float] = adjust_stacked,
            read: Callable[..., list[np.ndarray]] = features_stacked) -> str | None:
    """Train the pack both ways; None when they agree, else what differs (one line). Raises what the
    engine raises. `train`, `read`: the engine's training and features (the engine's own unless a
    caller, a test, hands it a broken one)."""
    model = without_dropout(base_model).eval()
    pruned_sets = [(), ((0, 0),)]
    rows = check_rows(tokenizer, limit)
    pad = tokenizer.pad_token_id
    seeds = (1, 2)
    start = features(pruned_copy(model, ()).to(device), rows, pad, SETTINGS, device)
    stack = StackedMLM.masked(model, pruned_sets, device)
    train(stack, tokenizer, [(rows, seed) for seed in seeds], SETTINGS, options)
    if not all(torch.isfinite(p.detach()).all() for p in stack.params.values()):
        return "the engine's trained weights are not finite"
    engine = read(stack, [rows] * len(seeds), pad, SETTINGS, options)
    del stack
    out_tol, move_tol = TOLERANCE[options.use_amp(device)]
    for k, (pruned, seed) in enumerate(zip(pruned_sets, seeds)):
        reference_model = pruned_copy(model, pruned).to(device)
        adjust(reference_model, tokenizer, rows, SETTINGS, seed, device)
        reference = features(reference_model, rows, pad, SETTINGS, device)
        got = engine[k]
        if not np.isfinite(got).all():
            return f"model {k}: the engine's features are not finite"
        if not pruned:  # the complete model's features before training are `start`
            moved = relative(got - start, reference - start)
            if moved > move_tol:
                return (f"model {k}: the engine's training moved the features {moved:.2g} (relative) away from "
                        "where the reference loop's moved them")
        off = relative(got, reference)
        if off > out_tol:
            return f"model {k}: the engine's features differ from the reference loop's by {off:.2g} (relative)"
    return None


def self_check(base_model, tokenizer, device: torch.device, options: EngineOptions = EngineOptions(),
               limit: int = 64, train: Callable[..., float] = adjust_stacked,
               read: Callable[..., list[np.ndarray]] = features_stacked) -> str | None:
    """None when the batched engine trains a tiny pack as the reference loop does on `device`; else
    why not, in one line (an exception of the engine included: the caller falls back, so nothing the
    engine raises may stop the run). `train`, `read`: see `compare`."""
    try:
        return compare(base_model, tokenizer, device, options, limit, train, read)
    except Exception as err:  # noqa: BLE001 - any failure of the engine means: use the reference loop
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"the engine raised {type(err).__name__}" + (f": {detail}" if detail else "")
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


__all__ = ["compare", "self_check"]
