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
    copies of the embeddings every step is memory-bound. Gradients are not kept between steps
    (`p.grad` is set to None after each): backward then writes each gradient once, where a
    persistent buffer costs a zeroing pass and an accumulation pass (read, add, write) on top; the
    per-model gradient views are one `unbind` per parameter."""

    def __init__(self, params: Iterable[torch.Tensor], n_models: int, eps: float, betas=BETAS):
        self.params = list(params)
        self.n_models = n_models
        self.eps = float(eps)
        self.beta1, self.beta2 = betas
        self.steps = [0] * n_models
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        for p in self.params:
            p.grad = None
        device = self.params[0].device if self.params else torch.device("cpu")
        self.state_steps = [torch.zeros((), dtype=torch.float32, device=device) for _ in range(n_models)]
        self.views = [([p[i] for p in self.params], [m[i] for m in self.exp_avg], [v[i] for v in self.exp_avg_sq])
                      for i in range(n_models)]

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
        """`scalars` from `scalars()` (host). Updates the active models, then drops every gradient."""
        active, lrs = scalars[0].tolist(), scalars[1].tolist()
        groups: dict[float, list[int]] = {}
        for i, on in enumerate(active):
            if on:
                groups.setdefault(lrs[i], []).append(i)
        if groups:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            per_model = list(zip(*(g.unbind(0) for g in grads)))  # per_model[i]: model i's gradient views
        n_params = len(self.params)
        for lr, models in groups.items():
            steps = [self.state_steps[i] for i in models]
            torch._foreach_add_(steps, 1.0)
            params, model_grads, avgs, avg_sqs, counts = [], [], [], [], []
            for i, count in zip(models, steps):
                p, m, v = self.views[i]
                params += p
                model_grads += per_model[i]
                avgs += m
                avg_sqs += v
                counts += [count] * n_params
            torch._fused_adamw_(params, model_grads, avgs, avg_sqs, [], counts, lr=lr, beta1=self.beta1,
                                beta2=self.beta2, weight_decay=0.0, eps=self.eps, amsgrad=False, maximize=False)
        for p in self.params:
            p.grad = None
