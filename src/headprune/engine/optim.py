"""`StackedAdamW`: N independent AdamWs over stacked tensors (torch's fused kernel)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .options import BETAS


class StackedAdamW:
    """N independent AdamWs (no weight decay) over stacked (N, ...) tensors: per-model step counts
    and learning rates; a model that is not active in a step keeps its parameters and state as they
    are (the reference never calls optimizer.step() for it).

    Each step runs torch's fused AdamW kernel (`torch._fused_adamw_`, what the reference loop's
    `AdamW(fused=True)` runs): one pass over each parameter, its gradient and its two moments (the
    per-tensor loop takes ~9 passes), which matters on a GPU where updating N full copies of the
    embeddings every step is memory-bound. One call per *run* of consecutive active models with the
    same learning rate and step count, on slices of the stacked tensors: in a pack (models ordered by
    their number of steps, so those whose data ran out come first) that is usually one call on the
    whole stack, with no per-model views to build. Gradients are not kept between steps (`p.grad`
    is set to None after each): backward writes each gradient once, where a persistent buffer would
    cost a zeroing pass and a read-add-write accumulation on top."""

    def __init__(self, params: Iterable[torch.Tensor], n_models: int, eps: float, betas=BETAS):
        self.params = list(params)
        self.n_models = n_models
        self.eps = float(eps)
        self.beta1, self.beta2 = betas
        self.steps = [0] * n_models  # optimizer steps already handed out by scalars() (may run ahead of step())
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        for p in self.params:
            p.grad = None
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self._counts: dict[int, torch.Tensor] = {}  # step number -> that number as a device scalar (the kernel's t)

    def scalars(self, active: Sequence[bool], lrs: Sequence[float]) -> torch.Tensor:
        """(3, N) float64 on the host: whether each model steps, its learning rate and its step
        number (Adam's t, from 1). Advances the host-side step counts of the active models."""
        out = np.zeros((3, self.n_models), dtype=np.float64)
        for i, (on, lr) in enumerate(zip(active, lrs)):
            if on:
                self.steps[i] += 1
                out[:, i] = 1.0, lr, self.steps[i]
        return torch.from_numpy(out)

    def _count(self, t: int) -> torch.Tensor:
        count = self._counts.get(t)
        if count is None:
            count = self._counts[t] = torch.full((), float(t), dtype=torch.float32, device=self.device)
        return count

    @torch.no_grad()
    def step(self, scalars: torch.Tensor) -> None:
        """`scalars` from `scalars()` (host). Updates the active models, then drops every gradient."""
        active, lrs, counts = scalars.tolist()
        runs: list[list] = []  # [first, last + 1, lr, t]
        for i in range(self.n_models):
            if not active[i]:
                continue
            if runs and runs[-1][1] == i and runs[-1][2] == lrs[i] and runs[-1][3] == counts[i]:
                runs[-1][1] = i + 1
            else:
                runs.append([i, i + 1, lrs[i], counts[i]])
        if runs:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        for first, stop, lr, t in runs:
            if first == 0 and stop == self.n_models:
                tensors = (self.params, grads, self.exp_avg, self.exp_avg_sq)
            else:
                tensors = tuple([x[first:stop] for x in group]
                                for group in (self.params, grads, self.exp_avg, self.exp_avg_sq))
            torch._fused_adamw_(*tensors, [], [self._count(int(t))] * len(self.params), lr=lr, beta1=self.beta1,
                                beta2=self.beta2, weight_decay=0.0, eps=self.eps, amsgrad=False, maximize=False)
        for p in self.params:
            p.grad = None
