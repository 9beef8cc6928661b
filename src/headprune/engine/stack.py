"""`StackedMLM`: N masked-LM models of one shape as stacked tensors, with batched matmuls."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from ..families import family_of, module_at
from ..heads import Head
from ..surgery import encoder_layers, kept_heads
from .batches import Step
from .options import supports


def _linear(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """N linear layers at once: x (N, T, in), weight_t (N, in, out) (the weights stored transposed,
    see `StackedMLM`), bias (N, out) -> (N, T, out)."""
    if bias is None:
        return torch.bmm(x, weight_t)
    return torch.baddbmm(bias.unsqueeze(1), x, weight_t)


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
    matmuls, finding each module and the position numbering in the family's row
    (`families.Family`); `state_of(i)` gives model i's parameters back.

    The weights of the linear layers (not the decoder) are stored transposed, (N, in, out): then
    `x @ W^T` is `bmm(x, W_t)` and backward produces their gradients in the stored layout, which
    autograd keeps as they are (for (N, out, in) weights it gets transposed views and copies each
    one, every step). `transposed` names them; `state_of`/`load_into` transpose them back."""

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
        if len(models) == 1:  # a copy: `.to` returns the model's own tensor when it already fits, and
            # training the stack would then change the source model (the base model of a one-task pack)
            stacked = {name: p.detach().to(self.device, torch.float32, copy=True).unsqueeze(0)
                       for name, p in named.items()}
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
        family = family_of(config)
        self.family = family  # where the models keep each module (families.FAMILIES)
        base = first.base_model
        self.word = name_of(module_at(base, family.word_embeddings))
        self.word_padding_idx = module_at(base, family.word_embeddings).padding_idx
        self.position = name_of(module_at(base, family.position_embeddings))
        self.position_padding_idx = module_at(base, family.position_embeddings).padding_idx
        self.token_type = name_of(module_at(base, family.token_type_embeddings))
        self.embedding_norm = norm(module_at(base, family.embedding_norm))
        self.padded_positions = family.padded_positions
        self.pad_token_id = config.pad_token_id
        self.head_size = int(config.hidden_size) // int(config.num_attention_heads)
        self.hidden_dropout = float(config.hidden_dropout_prob)
        self.attention_dropout = float(config.attention_probs_dropout_prob)
        from transformers.activations import ACT2FN

        self.act = ACT2FN[config.hidden_act] if isinstance(config.hidden_act, str) else config.hidden_act
        self.layers = []
        for layer in encoder_layers(first):
            at = partial(module_at, layer)
            self.layers.append({
                "q": linear(at(family.query)), "k": linear(at(family.key)),
                "v": linear(at(family.value)), "o": linear(at(family.output)),
                "norm1": norm(at(family.attention_norm)), "up": linear(at(family.intermediate)),
                "down": linear(at(family.ffn_output)), "norm2": norm(at(family.output_norm)),
            })
        self.head_dense = linear(module_at(first, family.mlm_dense))
        self.head_norm = norm(module_at(first, family.mlm_norm))
        self.head_act = self.act if family.mlm_activation is None else ACT2FN[family.mlm_activation]
        self.decoder = linear(module_at(first, family.mlm_decoder))
        self.transposed = {spec[key][0] for spec in self.layers for key in ("q", "k", "v", "o", "up", "down")}
        self.transposed.add(self.head_dense[0])
        self.transposed.discard(self.decoder[0])  # the decoder (often the word embeddings) keeps (V, H)
        for name in self.transposed:
            self.params[name] = self.params[name].detach().transpose(1, 2).contiguous().requires_grad_(True)
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
        return {name: self._model_tensor(name, i).to("cpu") for name in self.params}

    def _model_tensor(self, name: str, i: int) -> torch.Tensor:
        t = self.params[name][i].detach()
        return t.t().contiguous() if name in self.transposed else t

    def load_into(self, i: int, model: nn.Module) -> nn.Module:
        """Copy model i's parameters into `model` (a module of the same shape)."""
        named = dict(model.named_parameters())
        with torch.no_grad():
            for name in self.params:
                named[name].copy_(self._model_tensor(name, i).to(named[name].device, named[name].dtype))
        return model

    # ------------------------------------------------------------------ forward
    def _dropout(self, x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
        return F.dropout(x, p=p, training=True) if training and p > 0 else x

    def embed_flat(self, ids: torch.Tensor, positions: torch.Tensor, training: bool) -> torch.Tensor:
        """Flat layout: ids and position ids (N, T) -> (N, T, H)."""
        x = _lookup(self.params[self.word], ids, self.word_padding_idx)
        x = x + self.params[self.token_type][:, 0].unsqueeze(1)  # token_type_ids are all 0
        x = x + _lookup(self.params[self.position], positions, self.position_padding_idx if self.padded_positions
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

    def encode_flat(self, step: Step, training: bool, on_layer=None) -> torch.Tensor:
        """The last layer's output in the flat layout (N, T, H); `on_layer(i, x)`, if given, sees
        every layer's output (flat) as it is computed."""
        n, b, length = step.attention.shape
        mask = step.attention.reshape(n * b, 1, 1, length).bool()
        x = self.embed_flat(step.ids, step.positions, training)
        for i in range(self.n_layers):
            x = self.layer(i, x, mask, (n, b, length), training, (step.to_padded, step.to_flat))
            if on_layer is not None:
                on_layer(i, x)
        return x

    def mlm_loss(self, step: Step, training: bool = True) -> torch.Tensor:
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
        # Logits vocabulary-first, (N, V, M) = decoder (N, V, H) @ y^T: the decoder's gradient (the
        # word embeddings when tied: N full tables) then comes out (N, V, H) in the weight's own
        # layout, so it is added to the input embeddings' gradient and kept without a transposed
        # (strided) pass or a copy; cross_entropy takes the classes on dim 1 as they are.
        table = self.params[weight]
        if bias is None:
            logits = torch.bmm(table, y.transpose(1, 2))
        else:
            logits = torch.baddbmm(self.params[bias].unsqueeze(-1), table, y.transpose(1, 2))
        losses = F.cross_entropy(logits.float(), step.targets, reduction="none", ignore_index=-100)
        return (losses * step.weights).sum()
