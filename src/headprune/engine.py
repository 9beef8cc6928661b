"""The batched evaluation engine: PRUN_ADJ_EVAL for many models at once (fast on a GPU).

`scoring.score_seed` is the reference: one model, batch 16, one seed at a time. Here the seeds of one
pruned set (and, through `StackedMLM`, any models of the same shape) are trained *together*: their
parameters are stacked into (N, ...) tensors and every linear layer becomes one batched matmul, so
the GPU sees N x 16 rows per step while each model still computes exactly what the reference does:

- each model gets its own seed's split (`data.split_halves`), its own batch order
  (`torch.Generator().manual_seed(seed)` + `randperm` per epoch), its own masking
  (`DataCollatorForLanguageModeling(tokenizer, mlm_probability, seed=seed)`, called in the same
  order), batches of `settings.batch_size` rows, the same MLM loss (logits at masked positions only,
  mean over that model's masked tokens), its own linear learning-rate schedule and its own AdamW
  (betas 0.9/0.999, eps, no weight decay; Adam is elementwise, so one update over stacked tensors
  with per-model step counts and learning rates is N independent AdamWs);
- a batch with no masked token advances that model's schedule but not its optimizer (as the
  reference); a model whose data ran out (fewer steps) is frozen: its parameters and Adam state
  are left bit-for-bit unchanged;
- the *flat layout*: in training, each model's real tokens (its batch's rows one after the other)
  lie on one axis, padded only to the longest model of the tick, so the linear layers (nearly all
  the work) skip the row padding (on tweets 50-65% of a padded batch); attention gathers the
  tokens into rows of a common width (masked, so the outputs at real tokens are the same) and back.
  Missing rows are dummy rows that carry no loss. Position ids are computed per row as the model
  family does (BERT: column; RoBERTa: from the non-pad ids, after masking).

What differs from the reference, on purpose:

- **dropout streams.** Every model draws its dropout masks from the one global RNG, seeded from the
  group's seeds (`group_seed`): the masks are independent between models (per-model randomness, as
  `vmap(..., randomness="different")` would give) and deterministic for the same group, but they are
  not the reference loop's masks, and a seed's score depends (statistically only) on which seeds
  shared its group. With dropout disabled the trained weights equal the reference's up to floating
  point rounding (tests/test_engine.py); with dropout, parity is statistical (bench/engine.py runs a
  paired t-test over seeds).
- **precision.** On CUDA the forward/backward runs under bf16 autocast with fp32 master weights,
  fp32 Adam state and an fp32 loss; features are computed in fp32. On CPU everything is fp32.
- **the SVM** gets precomputed RBF Gram matrices (float64, on the device) -
  `svm_f1_precomputed`, the same decision function as `scoring.svm_f1`.
- **timing.** The adjusting stage of a group is timed once; every seed of the group reports that
  shared wall time as its `adjust_seconds`.

Supported families: BERT and RoBERTa-like (bert, roberta, xlm-roberta, camembert) with absolute
positions; `supports(model)` says whether a model can run here, `BatchedExecutor` falls back to the
reference for the others."""

from __future__ import annotations

import copy
import math
import queue
import threading
import time
import weakref
import zlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .data import split_halves
from .execute import StopRequests
from .models import count_parameters
from .scoring import EvalContext, ScoreSettings, SeedTask, resolve_device, run_task, saved_size
from .store import SeedScore
from .surgery import encoder_layers, prune_heads

Head = tuple[int, int]

SUPPORTED_FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert")
BETAS = (0.9, 0.999)  # torch.optim.AdamW's defaults, as the reference uses


@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs; none of these change what a score means (only rounding and speed)."""

    amp: bool | None = None  # bf16 autocast for training; None: on CUDA only (True on CPU: to test that path)
    feature_batch: int = 256  # rows per model per feature-extraction step
    max_models: int | None = None  # train at most this many models together (None: the whole group)
    width_multiple: int = 8  # pad each step's token axis to a multiple of this (fewer distinct shapes)
    prefetch: int | None = None  # steps prepared ahead by a background thread (None: 4 on CUDA, 0 on CPU)
    svm_workers: int = 4  # threads running libsvm (CPU) while the GPU goes on
    compile: bool = False  # torch.compile the training loss (CUDA only; experimental)
    pack: bool = False  # train tasks of different pruned sets together (masked stacks); see BatchedExecutor
    pack_models: int | None = None  # models per pack (None: what fits, `auto_pack_size`)
    pack_step_ratio: float = 1.25  # a pack's longest model has at most this many times the shortest's steps
    prep_workers: int | None = None  # processes drawing batches (None: on CUDA half the cores, at most 8; CPU 0)

    def resolved_prep_workers(self, device: torch.device) -> int:
        if self.prep_workers is not None:
            return max(0, int(self.prep_workers))
        import os

        return min(8, max(1, (os.cpu_count() or 2) // 2)) if device.type == "cuda" else 0

    def use_amp(self, device: torch.device) -> bool:
        return device.type == "cuda" if self.amp is None else bool(self.amp)


def supports(model) -> bool:
    """Whether the batched engine can run this masked-LM model."""
    config = model.config
    return (
        getattr(config, "model_type", None) in SUPPORTED_FAMILIES
        and getattr(config, "position_embedding_type", "absolute") in (None, "absolute")
        and not getattr(config, "is_decoder", False)
        and getattr(config, "embedding_size", config.hidden_size) == config.hidden_size
    )


def group_seed(seeds: Sequence[int]) -> int:
    """The global RNG seed of a group (dropout): a function of the group's seeds, in order."""
    return zlib.crc32(",".join(str(int(s)) for s in seeds).encode()) & 0x7FFFFFFF


# ----------------------------------------------------------------------------- stacked models


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """N linear layers at once: x (N, T, in), weight (N, out, in), bias (N, out) -> (N, T, out)."""
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=eps) * weight.unsqueeze(1) + bias.unsqueeze(1)


def _lookup(table: torch.Tensor, index: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
    """Per-model embedding lookup: table (N, V, H), index (N, T) -> (N, T, H). As nn.Embedding with
    `padding_idx`, positions holding that index send no gradient to the table."""
    n, v, h = table.shape
    offsets = torch.arange(n, device=index.device).unsqueeze(1) * v
    out = F.embedding(index + offsets, table.reshape(n * v, h))
    if padding_idx is not None:
        out = torch.where((index == padding_idx).unsqueeze(-1), out.detach(), out)
    return out


class StackedMLM:
    """N masked-LM models of one shape (same family, same pruned layout) as stacked fp32 tensors.

    `params[name]` is an (N, ...) leaf tensor for every distinct parameter of the models (names as
    `named_parameters()` gives them; tied weights appear once). The forward pass mirrors
    transformers' BERT/RoBERTa modules (embeddings, post-LN encoder layers, MLM head) with batched
    matmuls; `state_of(i)` gives model i's parameters back."""

    def __init__(self, models: Sequence[nn.Module], device: torch.device | str = "cpu"):
        if not models:
            raise ValueError("StackedMLM needs at least one model")
        first = models[0]
        if not supports(first):
            raise ValueError(f"the batched engine does not support model type '{first.config.model_type}'")
        self.device = torch.device(device)
        self.n_models = len(models)
        self.config = first.config
        named = dict(first.named_parameters())
        names_by_id = {id(p): name for name, p in named.items()}
        shapes = {name: tuple(p.shape) for name, p in named.items()}
        for other in models[1:]:
            other_shapes = {name: tuple(p.shape) for name, p in other.named_parameters()}
            if other_shapes != shapes:
                raise ValueError("StackedMLM: the models differ in shape (pruned differently?)")
        self.names = list(named)
        if len(models) == 1:
            stacked = {name: p.detach().to(self.device, torch.float32).unsqueeze(0) for name, p in named.items()}
        else:
            per_model = [dict(m.named_parameters()) for m in models]
            stacked = {name: torch.stack([pm[name].detach().to(self.device, torch.float32) for pm in per_model])
                       for name in self.names}
        self.params: dict[str, torch.Tensor] = {n: t.contiguous().requires_grad_(True) for n, t in stacked.items()}

        def name_of(module: nn.Module, attr: str = "weight") -> str | None:
            p = getattr(module, attr, None)
            return None if p is None else names_by_id[id(p)]

        def linear(module: nn.Module) -> tuple[str, str | None]:
            return name_of(module, "weight"), name_of(module, "bias")

        def norm(module: nn.Module) -> tuple[str, str, float]:
            return name_of(module, "weight"), name_of(module, "bias"), float(module.eps)

        config = first.config
        self.family = config.model_type
        embeddings = first.base_model.embeddings
        self.word = name_of(embeddings.word_embeddings)
        self.word_padding_idx = embeddings.word_embeddings.padding_idx
        self.position = name_of(embeddings.position_embeddings)
        self.position_padding_idx = embeddings.position_embeddings.padding_idx
        self.token_type = name_of(embeddings.token_type_embeddings)
        self.embedding_norm = norm(embeddings.LayerNorm)
        self.roberta_positions = self.family != "bert"
        self.pad_token_id = config.pad_token_id
        self.head_size = int(config.hidden_size) // int(config.num_attention_heads)
        self.hidden_dropout = float(config.hidden_dropout_prob)
        self.attention_dropout = float(config.attention_probs_dropout_prob)
        from transformers.activations import ACT2FN

        self.act = ACT2FN[config.hidden_act] if isinstance(config.hidden_act, str) else config.hidden_act
        self.layers = []
        for layer in encoder_layers(first):
            attention = layer.attention
            self.layers.append({
                "q": linear(attention.self.query), "k": linear(attention.self.key),
                "v": linear(attention.self.value), "o": linear(attention.output.dense),
                "norm1": norm(attention.output.LayerNorm), "up": linear(layer.intermediate.dense),
                "down": linear(layer.output.dense), "norm2": norm(layer.output.LayerNorm),
            })
        if self.family == "bert":
            predictions = first.cls.predictions
            self.head_dense = linear(predictions.transform.dense)
            self.head_norm = norm(predictions.transform.LayerNorm)
            self.head_act = self.act
            self.decoder = linear(predictions.decoder)
        else:
            head = first.lm_head
            self.head_dense = linear(head.dense)
            self.head_norm = norm(head.layer_norm)
            self.head_act = ACT2FN["gelu"]  # RobertaLMHead applies gelu whatever hidden_act says
            self.decoder = linear(head.decoder)
        self.n_layers = len(self.layers)
        self.head_masks: list[torch.Tensor | None] = [None] * self.n_layers  # per layer (N, heads): 1 = kept
        self.layer_on: list[torch.Tensor | None] = [None] * self.n_layers  # per layer (N,) bool: False = removed

    @classmethod
    def replicate(cls, model: nn.Module, n: int, device: torch.device | str = "cpu") -> StackedMLM:
        """n copies of one model (copied on the device)."""
        stack = cls([model], device)
        stack.n_models = n
        stack.params = {name: t.detach().expand(n, *t.shape[1:]).contiguous().requires_grad_(True)
                        for name, t in stack.params.items()}
        return stack

    @classmethod
    def masked(cls, model: nn.Module, pruned_sets: Sequence[Iterable[Head]],
               device: torch.device | str = "cpu") -> StackedMLM:
        """One full-shape copy of `model` per pruned set, each pruned by masks instead of surgery.

        A pruned head's context is multiplied by 0 before the attention output projection, and a
        layer whose heads are all pruned passes its input through unchanged (surgery removes that
        layer). Forward outputs equal the physically pruned model's; the pruned parts get gradients
        of exactly 0, so Adam (no weight decay) leaves them unchanged and every other parameter
        trains as in the pruned model. Models with different pruned sets can so be trained in one
        stack. Heads are named in the original model's coordinates (`surgery.kept_heads`)."""
        from .surgery import kept_heads

        sets = [{(int(l), int(h)) for l, h in pruned} for pruned in pruned_sets]
        stack = cls.replicate(model, len(sets), device)
        layout = list(kept_heads(model).items())  # position -> (original layer, [original heads])
        stack.head_masks = [None] * stack.n_layers
        stack.layer_on = [None] * stack.n_layers
        for position, (layer, heads) in enumerate(layout):
            keep = torch.tensor([[0.0 if (layer, h) in s else 1.0 for h in heads] for s in sets])
            if bool((keep == 0).any()):
                stack.head_masks[position] = keep.to(stack.device)
            on = keep.sum(1) > 0
            if not bool(on.all()):
                stack.layer_on[position] = on.to(stack.device)
        return stack

    def kept_layers(self, i: int) -> list[int]:
        """Layer positions model i really has (all, unless masks switched some off)."""
        return [layer for layer in range(self.n_layers)
                if self.layer_on[layer] is None or bool(self.layer_on[layer][i])]

    # ------------------------------------------------------------------ parameters
    def p(self, name: str | None) -> torch.Tensor | None:
        return None if name is None else self.params[name]

    def state_of(self, i: int) -> dict[str, torch.Tensor]:
        """Model i's parameters (CPU, fp32), named as the source model's `named_parameters()`."""
        return {name: t[i].detach().to("cpu") for name, t in self.params.items()}

    def load_into(self, i: int, model: nn.Module) -> nn.Module:
        """Copy model i's parameters into `model` (a module of the same shape)."""
        named = dict(model.named_parameters())
        with torch.no_grad():
            for name, t in self.params.items():
                named[name].copy_(t[i].detach().to(named[name].device, named[name].dtype))
        return model

    # ------------------------------------------------------------------ forward
    def _dropout(self, x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
        return F.dropout(x, p=p, training=True) if training and p > 0 else x

    def embed(self, input_ids: torch.Tensor, training: bool) -> torch.Tensor:
        """input_ids (N, B, L) -> (N, B*L, H)."""
        n, b, length = input_ids.shape
        flat = input_ids.reshape(n, b * length)
        x = _lookup(self.params[self.word], flat, self.word_padding_idx)
        x = x + self.params[self.token_type][:, 0].unsqueeze(1)  # token_type_ids are all 0
        if self.roberta_positions:
            mask = input_ids.ne(self.pad_token_id).int()
            positions = (torch.cumsum(mask, dim=2).type_as(mask) * mask).long() + self.pad_token_id
            x = x + _lookup(self.params[self.position], positions.reshape(n, b * length), self.position_padding_idx)
        else:
            table = self.params[self.position][:, :length]  # (N, L, H)
            x = (x.view(n, b, length, -1) + table.unsqueeze(1)).view(n, b * length, -1)
        weight, bias, eps = self.embedding_norm
        return self._dropout(_layer_norm(x, self.params[weight], self.params[bias], eps), self.hidden_dropout, training)

    def embed_flat(self, ids: torch.Tensor, positions: torch.Tensor, training: bool) -> torch.Tensor:
        """Flat layout: ids and position ids (N, T) -> (N, T, H)."""
        x = _lookup(self.params[self.word], ids, self.word_padding_idx)
        x = x + self.params[self.token_type][:, 0].unsqueeze(1)  # token_type_ids are all 0
        x = x + _lookup(self.params[self.position], positions, self.position_padding_idx if self.roberta_positions
                        else None)
        weight, bias, eps = self.embedding_norm
        return self._dropout(_layer_norm(x, self.params[weight], self.params[bias], eps), self.hidden_dropout, training)

    def layer(self, i: int, x: torch.Tensor, mask: torch.Tensor, shape: tuple[int, int, int],
              training: bool, layout: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """One post-LN encoder layer: x (N, B*L, H); mask (N*B, 1, 1, L) bool, True = attend.
        With `layout` = (to_padded (N, B*L), to_flat (N, T)), x is in the flat layout (N, T, H): the
        linear layers see only each model's real tokens; attention gathers them into rows and back."""
        n, b, length = shape
        spec = self.layers[i]
        d = self.head_size
        inputs = x

        def heads(name: str) -> torch.Tensor:
            weight, bias = spec[name]
            y = _linear(x, self.params[weight], self.p(bias))
            if layout is not None:
                y = torch.gather(y, 1, layout[0].unsqueeze(-1).expand(-1, -1, y.shape[-1]))
            return y.view(n * b, length, -1, d).transpose(1, 2)

        q, k, v = heads("q"), heads("k"), heads("v")
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attention_dropout if training else 0.0, scale=d**-0.5
        )
        mask = self.head_masks[i]
        if mask is not None:  # pruned heads contribute nothing (and get no gradient)
            heads_n = context.shape[1]
            context = (context.view(n, b, heads_n, length, d)
                       * mask.to(context.dtype).view(n, 1, heads_n, 1, 1)).view(n * b, heads_n, length, d)
        context = context.transpose(1, 2).reshape(n, b * length, -1)
        if layout is not None:
            context = torch.gather(context, 1, layout[1].unsqueeze(-1).expand(-1, -1, context.shape[-1]))
        weight, bias = spec["o"]
        attended = self._dropout(_linear(context, self.params[weight], self.p(bias)), self.hidden_dropout, training)
        weight, bias, eps = spec["norm1"]
        x = _layer_norm(attended + x, self.params[weight], self.params[bias], eps)
        weight, bias = spec["up"]
        up = self.act(_linear(x, self.params[weight], self.p(bias)))
        weight, bias = spec["down"]
        down = self._dropout(_linear(up, self.params[weight], self.p(bias)), self.hidden_dropout, training)
        weight, bias, eps = spec["norm2"]
        out = _layer_norm(down + x, self.params[weight], self.params[bias], eps)
        on = self.layer_on[i]
        if on is not None:  # a removed layer: its models get their input back
            out = torch.where(on.view(n, 1, 1), out, inputs)
        return out

    def encode_flat(self, step: _Step, training: bool) -> torch.Tensor:
        """The last layer's output in the flat layout (N, T, H)."""
        n, b, length = step.attention.shape
        mask = step.attention.reshape(n * b, 1, 1, length).bool()
        x = self.embed_flat(step.ids, step.positions, training)
        for i in range(self.n_layers):
            x = self.layer(i, x, mask, (n, b, length), training, (step.to_padded, step.to_flat))
        return x

    def encode(self, input_ids: torch.Tensor, attention: torch.Tensor, training: bool,
               keep_last: int = 1, on_layer=None) -> list[torch.Tensor]:
        """The outputs of the last `keep_last` encoder layers, each (N, B*L, H); `on_layer(i, x)`,
        if given, sees every layer's output as it is computed."""
        n, b, length = input_ids.shape
        mask = attention.reshape(n * b, 1, 1, length).bool()
        x = self.embed(input_ids, training)
        kept: list[torch.Tensor] = []
        for i in range(self.n_layers):
            x = self.layer(i, x, mask, (n, b, length), training)
            if on_layer is not None:
                on_layer(i, x)
            if i >= self.n_layers - keep_last:
                kept.append(x)
        return kept

    def mlm_loss(self, step: _Step, training: bool = True) -> torch.Tensor:
        """Sum over models of each model's mean MLM loss on one step (flat layout): logits only at the
        masked tokens (`step.index`, flat positions; `step.targets` their ids, -100 for padding;
        `step.weights` 1/count per model, 0 for padding)."""
        hidden = self.encode_flat(step, training)
        n, m = step.index.shape
        selected = torch.gather(hidden, 1, step.index.unsqueeze(-1).expand(n, m, hidden.shape[-1]))
        weight, bias = self.head_dense
        y = self.head_act(_linear(selected, self.params[weight], self.p(bias)))
        weight, bias, eps = self.head_norm
        y = _layer_norm(y, self.params[weight], self.params[bias], eps)
        weight, bias = self.decoder
        logits = _linear(y, self.params[weight], self.p(bias))
        losses = F.cross_entropy(logits.float().reshape(n * m, -1), step.targets.reshape(-1), reduction="none",
                                 ignore_index=-100)
        return (losses.view(n, m) * step.weights).sum()


# ----------------------------------------------------------------------------- AdamW over stacked tensors


class StackedAdamW:
    """N independent AdamWs (no weight decay) over stacked (N, ...) tensors: per-model step counts
    and learning rates; a model that is not active in a step keeps its parameters and state as they
    are (the reference never calls optimizer.step() for it).

    Each step runs torch's fused AdamW kernel (`torch._fused_adamw_`, what the reference loop's
    `AdamW(fused=True)` runs) on per-model views of the stacked tensors, one call per distinct
    learning rate among the active models: one pass over each parameter, its gradient and its two
    moments (the per-tensor loop takes ~9 passes), which matters on a GPU where updating N full
    copies of the embeddings every step is memory-bound. Gradients live in persistent buffers
    (`p.grad`, zeroed after each step), so the views are made once."""

    def __init__(self, params: Iterable[torch.Tensor], n_models: int, eps: float, betas=BETAS):
        self.params = list(params)
        self.n_models = n_models
        self.eps = float(eps)
        self.beta1, self.beta2 = betas
        self.steps = [0] * n_models
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.grads = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        for p, g in zip(self.params, self.grads):
            p.grad = g  # backward accumulates into it in place
        device = self.params[0].device if self.params else torch.device("cpu")
        self.state_steps = [torch.zeros((), dtype=torch.float32, device=device) for _ in range(n_models)]
        self.views = [([p[i] for p in self.params], [g[i] for g in self.grads], [m[i] for m in self.exp_avg],
                       [v[i] for v in self.exp_avg_sq]) for i in range(n_models)]

    def scalars(self, active: Sequence[bool], lrs: Sequence[float]) -> torch.Tensor:
        """(2, N) float64 on the host: whether each model steps, and its learning rate. Advances the
        host-side step counts of the active models."""
        out = np.zeros((2, self.n_models), dtype=np.float64)
        for i, (on, lr) in enumerate(zip(active, lrs)):
            if on:
                self.steps[i] += 1
                out[0, i], out[1, i] = 1.0, lr
        return torch.from_numpy(out)

    @torch.no_grad()
    def step(self, scalars: torch.Tensor) -> None:
        """`scalars` from `scalars()` (host). Updates the active models, then zeroes every gradient."""
        active, lrs = scalars[0].tolist(), scalars[1].tolist()
        groups: dict[float, list[int]] = {}
        for i, on in enumerate(active):
            if on:
                groups.setdefault(lrs[i], []).append(i)
        n_params = len(self.params)
        for lr, models in groups.items():
            steps = [self.state_steps[i] for i in models]
            torch._foreach_add_(steps, 1.0)
            params, grads, avgs, avg_sqs, counts = [], [], [], [], []
            for i, count in zip(models, steps):
                p, g, m, v = self.views[i]
                params += p
                grads += g
                avgs += m
                avg_sqs += v
                counts += [count] * n_params
            torch._fused_adamw_(params, grads, avgs, avg_sqs, [], counts, lr=lr, beta1=self.beta1, beta2=self.beta2,
                                weight_decay=0.0, eps=self.eps, amsgrad=False, maximize=False)
        torch._foreach_zero_(self.grads)


# ----------------------------------------------------------------------------- batches


@dataclass
class _Step:
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
    scalars: torch.Tensor  # (2, N) on the host: active, learning rate (StackedAdamW.scalars)
    tokens: int  # real (non-padding) tokens in the step

    def _map(self, f) -> _Step:  # the scalars stay on the host (the optimizer reads them there)
        return _Step(*(f(getattr(self, name)) for name in _STEP_TENSORS), self.scalars, self.tokens)

    def to(self, device: torch.device) -> _Step:
        return self if device.type == "cpu" else self._map(lambda t: t.to(device, non_blocking=True))

    def pin(self) -> _Step:
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
        fast = FastMasking(tokenizer, settings.mlm_probability, seed)

        def collate(rows):
            return fast([r["input_ids"] for r in rows])
    else:
        collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=settings.mlm_probability, seed=seed)
    order = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(ids) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    step = 0
    for _ in range(settings.epochs):
        permutation = torch.randperm(len(ids), generator=order).tolist()
        for b in range(steps_per_epoch):
            rows = [{"input_ids": ids[i]} for i in permutation[b * settings.batch_size: (b + 1) * settings.batch_size]]
            batch = collate(rows)
            lr = settings.learning_rate * max(0.0, float(total - step) / float(max(1, total)))
            step += 1
            yield None if not (batch["labels"] != -100).any() else (batch, lr)


@dataclass(frozen=True)
class Batch:
    """One model's collated batch, compactly (what `_steps` needs, cheap to send between processes):
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


def _steps(tokenizer, jobs: Sequence[tuple[list[list[int]], int]], settings: ScoreSettings,
           optimizer: StackedAdamW, width_multiple: int, prepared: Sequence | None = None,
           position_pad: int | None = None) -> Iterator[_Step]:
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


def _flat_step(items: Sequence[Batch | None], n: int, rows: int, width: int, pad_id: int, position_pad: int | None,
               multiple: int, scalars: torch.Tensor) -> _Step:
    """Lay N models' batches out flat (see `_Step`). `pad_id`: the tokenizer's; `position_pad`: the
    model's padding index of RoBERTa-like position ids, or None for absolute positions."""
    parts = []
    for item in items:
        if item is None:
            parts.append(None)
            continue
        lengths = item.attention.sum(1).astype(np.int64)  # right-padded rows: real tokens come first
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        row = np.repeat(np.arange(len(lengths)), lengths)
        col = np.arange(int(lengths.sum())) - np.repeat(starts, lengths)
        ids = item.input_ids[row, col].astype(np.int64)
        if position_pad is not None:  # as transformers: cumsum of non-pad ids in the row, + padding_idx
            real = (item.input_ids != position_pad).astype(np.int64)
            positions = ((np.cumsum(real, axis=1) * real) + position_pad)[row, col]
        else:
            positions = col
        parts.append((lengths, starts, row, col, ids, positions))
    t = _round_up(max([len(part[4]) for part in parts if part is not None] + [1]), multiple)
    ids = np.full((n, t), pad_id, dtype=np.int64)
    positions = np.full((n, t), 0 if position_pad is None else position_pad, dtype=np.int64)
    to_padded = np.zeros((n, rows * width), dtype=np.int64)
    to_flat = np.zeros((n, t), dtype=np.int64)
    attention = np.zeros((n, rows, width), dtype=np.int64)
    attention[:, :, 0] = 1  # dummy rows attend to one slot: no fully masked row, no loss
    masked_at: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    tokens = 0
    for j, (item, part) in enumerate(zip(items, parts)):
        if part is None:
            masked_at.append(np.zeros(0, dtype=np.int64))
            labels.append(np.zeros(0, dtype=np.int64))
            continue
        lengths, starts, row, col, flat_ids, flat_positions = part
        k = len(flat_ids)
        tokens += k
        ids[j, :k] = flat_ids
        positions[j, :k] = flat_positions
        slots = row * width + col
        to_padded[j, slots] = np.arange(k)
        to_flat[j, :k] = slots
        b = len(lengths)
        attention[j, :b, :] = 0
        attention[j, :b, : item.attention.shape[1]] = item.attention
        w = item.input_ids.shape[1]
        r, c = item.positions // w, item.positions % w
        masked_at.append(starts[r] + c)
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
    return _Step(*(torch.from_numpy(a) for a in (ids, positions, to_padded, to_flat, attention, index, targets,
                                                   weights)), scalars, tokens)


def _prefetched(iterator: Iterator, depth: int, transform=None) -> Iterator:
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


# ----------------------------------------------------------------------------- the three stages, stacked


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
    ticks = _steps(tokenizer, jobs, settings, optimizer, options.width_multiple, prepared,
                   stack.pad_token_id if stack.roberta_positions else None)
    for step in _prefetched(ticks, depth, transform):
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
    n_chunks = max(math.ceil(len(rows) / chunk) for rows in ids) if ids else 0
    for c in range(n_chunks):
        parts = [order[c * chunk: (c + 1) * chunk] for order in orders]
        lengths = [len(ids[j][i]) for j, part in enumerate(parts) for i in part]
        width = _round_up(max(lengths), options.width_multiple)
        rows = max(len(part) for part in parts)
        input_ids = torch.full((n, rows, width), pad_id, dtype=torch.long)
        attention = torch.zeros((n, rows, width), dtype=torch.long)
        attention[:, :, 0] = 1
        for j, part in enumerate(parts):
            for r, i in enumerate(part):
                row = ids[j][i]
                input_ids[j, r, : len(row)] = torch.tensor(row, dtype=torch.long)
                attention[j, r, :] = 0
                attention[j, r, : len(row)] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        mask = attention.unsqueeze(-1).float()
        count = mask.sum(2)
        # The mean of the concatenation is the concatenation of the means (per feature): pool each
        # layer on its own as it is computed rather than materialise (N, rows, width, layers * H).
        pooled: dict[int, torch.Tensor] = {}

        def pool(i: int, h: torch.Tensor, pooled=pooled, rows=rows, width=width, mask=mask, count=count) -> None:
            if i in needed:
                pooled[i] = (h.float().view(n, rows, width, -1) * mask).sum(2) / count

        stack.encode(input_ids, attention, training=False, keep_last=0, on_layer=pool)
        host = {i: t.cpu().numpy() for i, t in pooled.items()}
        for j, part in enumerate(parts):
            if part:
                out[j][part] = np.concatenate([host[i][j, : len(part)] for i in wanted[j]], axis=-1)
    return out


def svm_f1_precomputed(x: np.ndarray, y: np.ndarray, n_folds: int, seed: int,
                       device: torch.device | str = "cpu") -> float:
    """`scoring.svm_f1` with precomputed kernels: the same folds (StratifiedKFold(n_folds,
    shuffle=True, random_state=seed)), per fold gamma as sklearn's 'scale' (1 / (n_features *
    X_train.var())), RBF Gram matrices exp(-gamma * ||a - b||^2) in float64 on `device`, and
    `SVC(kernel="precomputed", class_weight="balanced")`; mean F1-macro over the folds."""
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.svm import SVC

    x64 = np.ascontiguousarray(x, dtype=np.float64)
    y = np.asarray(y)
    features = torch.from_numpy(x64).to(device)
    squares = (features * features).sum(1)
    distances = (squares.unsqueeze(1) + squares.unsqueeze(0)) - 2.0 * (features @ features.T)
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    scores = []
    for train, test in folds.split(x64, y):
        variance = x64[train].var()
        gamma = 1.0 / (x64.shape[1] * variance) if variance != 0 else 1.0
        train_t = torch.from_numpy(train).to(features.device)
        test_t = torch.from_numpy(test).to(features.device)
        rows = distances.index_select(1, train_t)
        k_train = torch.exp(-gamma * rows.index_select(0, train_t)).cpu().numpy()
        k_test = torch.exp(-gamma * rows.index_select(0, test_t)).cpu().numpy()
        svc = SVC(kernel="precomputed", class_weight="balanced").fit(k_train, y[train])
        scores.append(f1_score(y[test], svc.predict(k_test), average="macro"))
    return float(np.mean(scores))


# ----------------------------------------------------------------------------- a group of seeds


@dataclass
class _Trained:
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
        key = tuple(sorted((int(l), int(h)) for l, h in pruned))
        if key not in self._sizes:
            if model is None:
                model = copy.deepcopy(self.base_model)
                if key:
                    prune_heads(model, list(key))
            self._sizes[key] = (count_parameters(model), saved_size(model))
        return self._sizes[key]


def _train_group(base_model, tokenizer, ids, labels, pruned, seeds, settings, device, options,
                 stats: dict | None = None, sizes: SizeCache | None = None, prepared: Sequence | None = None
                 ) -> _Trained:
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
    return _Trained(feats, [labels[split[1]] for split in splits], list(seeds), seconds, [tuple(pruned)] * n, sizes)


def task_jobs(datasets: dict, tasks: Sequence[SeedTask]) -> list[tuple[list[list[int]], int]]:
    """(finetuning rows, seed) of each task: the first half of its dataset's seeded split."""
    return [([datasets[t.dataset][0][i] for i in split_halves(datasets[t.dataset][1], t.seed)[0]], t.seed)
            for t in tasks]


def _train_pack(base_model, tokenizer, datasets: dict, tasks: Sequence[SeedTask], settings: ScoreSettings,
                device: torch.device, options: EngineOptions, sizes: SizeCache,
                stats: dict | None = None, prepared: Sequence | None = None) -> _Trained:
    """Models of different pruned sets (and datasets) trained together in one masked stack."""
    splits = [split_halves(datasets[t.dataset][1], t.seed) for t in tasks]
    stack = StackedMLM.masked(base_model, [t.pruned for t in tasks], device)
    jobs = [([datasets[t.dataset][0][i] for i in split[0]], t.seed) for t, split in zip(tasks, splits)]
    seconds = adjust_stacked(stack, tokenizer, jobs, settings, options, stats, prepared)
    start_features = time.perf_counter()
    feats = features_stacked(stack, [[datasets[t.dataset][0][i] for i in split[1]] for t, split in zip(tasks, splits)],
                             tokenizer.pad_token_id, settings, options)
    del stack
    if stats is not None:
        stats["features_seconds"] = stats.get("features_seconds", 0.0) + time.perf_counter() - start_features
        stats["adjust_seconds"] = stats.get("adjust_seconds", 0.0) + seconds
    return _Trained(feats, [datasets[t.dataset][1][split[1]] for t, split in zip(tasks, splits)],
                    [t.seed for t in tasks], seconds, [tuple(t.pruned) for t in tasks], sizes)


def _svm(trained: _Trained, k: int, settings: ScoreSettings, device: torch.device) -> SeedScore:
    x, y, seed = trained.features[k], trained.labels[k], trained.seeds[k]
    if device.type == "cuda":  # a side stream: copying a Gram matrix back must not wait for the training
        with torch.cuda.stream(torch.cuda.Stream(device)):
            f1 = svm_f1_precomputed(x, y, settings.n_folds, seed, device)
    else:
        f1 = svm_f1_precomputed(x, y, settings.n_folds, seed, device)
    n_params, size = trained.sizes(trained.pruned[k])  # a new pruned set is measured here, off the GPU's path
    return SeedScore(f1=f1, adjust_seconds=trained.adjust_seconds, n_params=n_params, size_bytes=size,
                     device=str(device.type))


def score_seeds_batched(base_model, tokenizer, ids: list[list[int]], labels: np.ndarray, pruned: Iterable[Head],
                        seeds: Sequence[int], settings: ScoreSettings, device: torch.device | str,
                        options: EngineOptions = EngineOptions(), stats: dict | None = None) -> list[SeedScore]:
    """PRUN_ADJ_EVAL of one pruned set on one dataset for several seeds, trained together.

    Same splits, batch orders, masking, loss, schedules and AdamWs as `scoring.score_seed` per seed
    (see the module docstring for what differs: dropout streams, bf16 on CUDA). Every seed's
    `adjust_seconds` is the **shared** wall time of the group's adjusting stage (all seeds at once),
    not a per-seed time. Returns one SeedScore per seed, in order. `base_model` is not modified.
    `stats`, if given, accumulates "tokens" and "steps" (training), "adjust_seconds",
    "features_seconds" and "svm_seconds" (wall times of the whole group)."""
    device = torch.device(device) if not isinstance(device, torch.device) else device
    seeds = [int(s) for s in seeds]
    trained = _train_group(base_model, tokenizer, ids, labels, pruned, seeds, settings, device, options, stats)
    return _svms(trained, settings, device, options, stats)


def score_pack(base_model, tokenizer, datasets: dict[str, tuple[list[list[int]], np.ndarray]],
               tasks: Sequence[SeedTask], settings: ScoreSettings, device: torch.device | str,
               options: EngineOptions = EngineOptions(), stats: dict | None = None,
               sizes: SizeCache | None = None) -> list[SeedScore]:
    """PRUN_ADJ_EVAL of several (pruned set, dataset, seed) tasks trained together in one masked
    stack (`StackedMLM.masked`). Each model computes what `score_seeds_batched` computes for its
    task; every `adjust_seconds` is the pack's shared wall time. `datasets`: name -> (ids, labels)."""
    device = torch.device(device) if not isinstance(device, torch.device) else device
    trained = _train_pack(base_model, tokenizer, datasets, list(tasks), settings, device, options,
                          sizes or SizeCache(base_model), stats)
    return _svms(trained, settings, device, options, stats)


def _svms(trained: _Trained, settings: ScoreSettings, device: torch.device, options: EngineOptions,
          stats: dict | None) -> list[SeedScore]:
    start = time.perf_counter()
    n = len(trained.seeds)
    if options.svm_workers > 1 and n > 1:
        with ThreadPoolExecutor(min(options.svm_workers, n)) as pool:
            scores = list(pool.map(lambda k: _svm(trained, k, settings, device), range(n)))
    else:
        scores = [_svm(trained, k, settings, device) for k in range(n)]
    if stats is not None:
        stats["svm_seconds"] = stats.get("svm_seconds", 0.0) + time.perf_counter() - start
    return scores


# ----------------------------------------------------------------------------- packing


def finetune_steps(n_rows: int, settings: ScoreSettings) -> int:
    """Optimizer ticks of one model finetuned on `n_rows` rows."""
    return math.ceil(n_rows / settings.batch_size) * settings.epochs


def auto_pack_size(model, device: torch.device, ceiling: int = 128) -> int:
    """How many full-shape copies of `model` to train together: on CUDA, what fits in 80% of the
    free memory at ~16 bytes per parameter (weights, gradient, two Adam moments) plus activations of
    a batch of 16 rows of up to 64 tokens; on CPU 16 (a CPU gains little from larger stacks)."""
    if device.type != "cuda":
        return 16
    config = model.config
    n_params = count_parameters(model)
    hidden, inter = int(config.hidden_size), int(getattr(config, "intermediate_size", 4 * config.hidden_size))
    layers = len(encoder_layers(model))
    activations = 16 * 64 * layers * (10 * hidden + 2 * inter) * 4
    per_model = 16 * n_params + activations
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(ceiling, (0.8 * free) // per_model)))


def plan_packs(tasks: Sequence[SeedTask], steps: dict[SeedTask, int], size: int, ratio: float = 1.25
               ) -> list[list[SeedTask]]:
    """Tasks in packs of at most `size` models whose step counts are within `ratio` of each other
    (a model whose data runs out waits for the others: similar lengths waste little). Deterministic:
    tasks are ordered by (steps, dataset, pruned set, seed) and packed greedily."""
    ordered = sorted(dict.fromkeys(tasks), key=lambda t: (steps[t], t.dataset, t.pruned, t.seed))
    packs: list[list[SeedTask]] = []
    for task in ordered:
        if packs and len(packs[-1]) < size and steps[task] <= ratio * steps[packs[-1][0]]:
            packs[-1].append(task)
        else:
            packs.append([task])
    return packs


def plan_units(tasks: Sequence[SeedTask], datasets: dict, settings: ScoreSettings, options: EngineOptions,
               pack_size: int) -> list[list[SeedTask]]:
    """What the batched engine trains together, in order: with `options.pack`, packs of at most
    `pack_size` models (`plan_packs`), longest first (the SVMs of the big packs then run while the
    small ones train, and the last pack's SVMs, the GPU's idle tail before the next search round,
    are the quickest); without, one pruned set's seeds on one dataset per unit."""
    unique = list(dict.fromkeys(tasks))
    if options.pack:
        steps = {t: finetune_steps(len(split_halves(datasets[t.dataset][1], t.seed)[0]), settings) for t in unique}
        return plan_packs(unique, steps, pack_size, options.pack_step_ratio)[::-1]
    groups: dict[tuple[tuple[Head, ...], str], list[SeedTask]] = {}
    for task in unique:
        groups.setdefault((tuple(task.pruned), task.dataset), []).append(task)
    return list(groups.values())


# ----------------------------------------------------------------------------- the executor


class BatchedExecutor(StopRequests):
    """`execute.InProcessExecutor`'s interface: `run(context, tasks)` yields (task, SeedScore).

    Without packing, tasks are grouped by (pruned set, dataset) and each group's seeds are trained
    together (`score_seeds_batched`), physically pruned: each `adjust_seconds` is the wall time of
    one candidate's seeds, comparable between candidates. With `options.pack`, tasks of different
    pruned sets and datasets of similar length are trained together in masked stacks of up to
    `options.pack_models` models (`score_pack`): far larger batches for the GPU, the same scores
    (statistically: dropout streams depend on the pack), but `adjust_seconds` is then a pack's
    shared time. The SVMs run in background threads while the next stack trains. Models the engine
    does not support go through the reference `scoring.run_task`."""

    name = "batched"

    def __init__(self, options: EngineOptions = EngineOptions()):
        self.options = options
        self._sizes: SizeCache | None = None
        self._prep: BatchPreparer | None = None
        self._fits: int | None = None  # models per pack known to fit (after running out of GPU memory)

    @property
    def store_tag(self) -> str:
        """The `engine` entry of store keys: scores of differently drawn dropout streams stay apart."""
        return "batched-packed" if self.options.pack else "batched"

    def sizes(self, base_model) -> SizeCache:
        if self._sizes is None or self._sizes.base_model is not base_model:
            self._sizes = SizeCache(base_model)
        return self._sizes

    def run(self, context: EvalContext, tasks: Sequence[SeedTask]) -> Iterator[tuple[SeedTask, SeedScore]]:
        device = resolve_device(context.device) if not isinstance(context.device, torch.device) else context.device
        if not supports(context.base_model):
            for task in tasks:
                yield task, run_task(context, task)
            return
        sizes = self.sizes(context.base_model)
        pending: list[tuple[SeedTask, Future]] = []
        with ThreadPoolExecutor(max(1, self.options.svm_workers)) as pool:
            for group, trained in self._trained(context, tasks, device, sizes):
                pending += [(task, pool.submit(_svm, trained, k, context.settings, device))
                            for k, task in enumerate(group)]
                while pending and pending[0][1].done():  # hand over what is ready, in order
                    task, future = pending.pop(0)
                    yield task, future.result()
            for task, future in pending:
                yield task, future.result()

    def _trained(self, context: EvalContext, tasks: Sequence[SeedTask], device: torch.device,
                 sizes: SizeCache) -> Iterator[tuple[list[SeedTask], _Trained]]:
        """Train unit after unit (a pack, or one candidate's seeds), drawing the next unit's batches
        in the preparer's processes while this one trains."""
        settings = context.settings
        size = (self.options.pack_models or auto_pack_size(context.base_model, device)) if self.options.pack else 0
        units = plan_units(tasks, context.datasets, settings, self.options, size)
        preparer = self._preparer(device)

        def prepare(unit):
            return preparer.prepare(context.tokenizer, task_jobs(context.datasets, unit), settings)

        ahead = prepare(units[0]) if units else None
        for i, unit in enumerate(units):
            if self.stop_requested:
                return
            prepared = ahead
            ahead = prepare(units[i + 1]) if i + 1 < len(units) else None
            if self.options.pack:
                yield from self._train_pack_fitting(context, unit, prepared, device, sizes)
            else:
                ids, labels = context.datasets[unit[0].dataset]
                yield unit, _train_group(context.base_model, context.tokenizer, ids, labels, unit[0].pruned,
                                         [t.seed for t in unit], settings, device, self.options, sizes=sizes,
                                         prepared=prepared)

    def _train_pack_fitting(self, context: EvalContext, pack: list[SeedTask], prepared: list, device: torch.device,
                            sizes: SizeCache) -> Iterator[tuple[list[SeedTask], _Trained]]:
        """A pack, in parts of at most the size known to fit: a part that runs out of GPU memory is
        halved (and so are the parts after it), as the memory estimate of `auto_pack_size` is rough."""
        start = 0
        while start < len(pack):
            cap = self._fits or len(pack)
            part = pack[start:start + cap]
            trained = None
            try:
                trained = _train_pack(context.base_model, context.tokenizer, context.datasets, part, context.settings,
                                      device, self.options, sizes, prepared=prepared[start:start + cap])
            except torch.cuda.OutOfMemoryError:
                if len(part) == 1:
                    raise
            if trained is None:  # out of memory: outside the except block its frames (and tensors) are gone
                import gc

                self._fits = max(1, len(part) // 2)
                gc.collect()
                torch.cuda.empty_cache()
                continue
            yield part, trained
            start += len(part)

    def _preparer(self, device: torch.device) -> BatchPreparer:
        workers = self.options.resolved_prep_workers(device)
        if self._prep is None or self._prep.workers != workers:
            self.close()
            self._prep = BatchPreparer(workers)
        return self._prep

    def close(self) -> None:
        if self._prep is not None:
            self._prep.close()
            self._prep = None


def default_executor(device: str | torch.device = "auto", options: EngineOptions = EngineOptions()):
    """The executor for a device: `BatchedExecutor` on CUDA, the reference `InProcessExecutor` otherwise."""
    from .execute import InProcessExecutor

    resolved = device if isinstance(device, torch.device) else resolve_device(str(device))
    return BatchedExecutor(options) if resolved.type == "cuda" else InProcessExecutor()


__all__ = [
    "Batch", "BatchPreparer", "BatchedExecutor", "EngineOptions", "SizeCache", "StackedAdamW", "StackedMLM",
    "adjust_stacked",
    "auto_pack_size", "default_executor", "features_stacked", "finetune_steps", "group_seed", "job_batches",
    "job_stream", "plan_packs", "plan_units", "score_pack", "score_seeds_batched", "supports", "svm_f1_precomputed",
    "task_jobs",
]
