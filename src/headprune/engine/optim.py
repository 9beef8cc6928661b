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
