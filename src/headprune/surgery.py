"""Head gates, physical head pruning, layer removal, head specifications: pure functions on modules.

Where a family keeps its attention projections comes from its `families.Family` row; saving and
loading a pruned model is `checkpoint`'s. Heads are always named in the original model's
(layer, head) coordinates, also after layers were removed. The map of what is left lives in
`config.headprune_kept`: {original layer (str): [original heads kept]}, only for layers that remain."""

from __future__ import annotations

import torch
from torch import nn

from .errors import HeadpruneError
from .families import family_of, module_at
from .heads import HeadSet

# ----------------------------------------------------------------------------- the head map


def original_shape(config) -> tuple[int, int]:
    """(layers, heads per layer) of the original, unpruned model."""
    layers = getattr(config, "headprune_original_layers", None) or config.num_hidden_layers
    return int(layers), int(config.num_attention_heads)


def kept_heads(model) -> dict[int, list[int]]:
    """{original layer: [original heads]} of what the model still has, in layer order."""
    kept = getattr(model.config, "headprune_kept", None)
    if kept:  # sorted: a config read back from JSON lists layer "10" before "2"
        return {int(layer): list(heads) for layer, heads in sorted(kept.items(), key=lambda item: int(item[0]))}
    layers, heads = original_shape(model.config)
    return {layer: list(range(heads)) for layer in range(layers)}


def pruned_heads(model) -> list[tuple[int, int]]:
    """Sorted (layer, head) pairs pruned from the original model."""
    layers, heads = original_shape(model.config)
    kept = kept_heads(model)
    return [(l, h) for l in range(layers) for h in range(heads) if h not in kept.get(l, [])]


def normalize_heads(heads, config) -> dict[int, list[int]]:
    """Accept {layer: [heads]} or [(layer, head), ...]; validate against the original shape."""
    return HeadSet(heads).within(*original_shape(config)).by_layer()


def parse_head_spec(spec: str, n_layers: int, n_heads: int) -> dict[int, list[int]]:
    """Parse '0:1,2;3:*' -> {0: [1, 2], 3: [0..n_heads-1]} (`HeadSet.parse`). Empty string -> {}."""
    return HeadSet.parse(spec, n_layers, n_heads).by_layer()


def format_head_spec(heads, n_heads: int) -> str:
    """{layer: [heads]} or [(layer, head), ...] as a head specification (`HeadSet.spec`)."""
    return HeadSet(heads).spec(n_heads)


# ----------------------------------------------------------------------------- modules


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(module_at(module, parent) if parent else module, name, value)


def encoder_layers(model) -> nn.ModuleList:
    """The encoder's layers, where the model's family keeps them."""
    return module_at(model.base_model, family_of(model.config).layers)


def _head_size(config) -> int:
    return int(config.hidden_size) // int(config.num_attention_heads)


def prune_linear(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping only `index` along `dim` (0: output rows, 1: input columns)."""
    weight = layer.weight.index_select(dim, index).detach().clone()
    bias = None
    if layer.bias is not None:
        bias = (layer.bias if dim == 1 else layer.bias[index]).detach().clone()
    # skip_init: no random initialisation (it would be overwritten), so pruning draws nothing from
    # torch's global RNG: a copy pruned in one thread must not shift another thread's dropout masks.
    new = nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None,
                             device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(layer.weight.requires_grad)
    return new


# ----------------------------------------------------------------------------- pruning


def prune_heads(model, heads) -> nn.Module:
    """Physically remove `heads` ({layer: [heads]} or [(layer, head)], original coordinates), in place.

    Q/K/V rows and output-projection columns shrink; a layer that loses every head is removed
    whole (attention and feed-forward). Heads already pruned are ignored. Returns the model.

    The kept-heads map is recorded on a copy of the model's config, never on a config object other
    models may share (one built from it later would be taken for pruned); a model whose modules do
    not have the shapes its config records is refused."""
    family = family_of(model.config)
    heads = normalize_heads(heads, model.config)
    n_layers, n_heads = original_shape(model.config)
    kept = kept_heads(model)
    _check_shapes(model, kept)
    new_kept = {layer: [h for h in hs if h not in heads.get(layer, [])] for layer, hs in kept.items()}
    if not any(new_kept.values()):
        raise HeadpruneError("cannot prune every head of the model: at least one head must remain")
    d = _head_size(model.config)
    layers = encoder_layers(model)
    survivors = []
    for position, (orig_layer, hs) in enumerate(kept.items()):
        module = layers[position]
        remaining = new_kept[orig_layer]
        if not remaining:
            continue  # the whole encoder layer goes
        if len(remaining) < len(hs):
            local = [hs.index(h) for h in remaining]
            index = torch.cat([torch.arange(i * d, (i + 1) * d) for i in local]).to(
                module_at(module, family.query).weight.device
            )
            for path in (family.query, family.key, family.value):
                _set(module, path, prune_linear(module_at(module, path), index, dim=0))
            _set(module, family.output, prune_linear(module_at(module, family.output), index, dim=1))
            attention = module_at(module, family.attention)
            for attr, value in (("num_attention_heads", len(remaining)), ("all_head_size", len(remaining) * d)):
                if hasattr(attention, attr):
                    setattr(attention, attr, value)
        survivors.append(module)
    if len(survivors) < len(layers):
        _set(model.base_model, family.layers, nn.ModuleList(survivors))
        for i, module in enumerate(survivors):
            for sub in module.modules():
                if hasattr(sub, "layer_idx"):
                    sub.layer_idx = i
    final = {str(layer): hs for layer, hs in new_kept.items() if hs}
    _own_config(model)
    model.config.headprune_original_layers = n_layers
    model.config.headprune_kept = final
    model.config.num_hidden_layers = len(final)
    return model


def _check_shapes(model, kept: dict[int, list[int]]) -> None:
    """Refuse a model whose encoder layers do not hold the heads its config records (a model built
    from a config object that pruning another model changed): pruning it would silently do nothing."""
    family = family_of(model.config)
    layers = encoder_layers(model)
    d = _head_size(model.config)
    found = [module_at(layer, family.query).weight.shape[0] // d for layer in layers]
    recorded = [len(hs) for hs in kept.values()]
    if found != recorded:
        raise HeadpruneError(
            f"the model's layers hold {found} heads but its config records {recorded} "
            "(config.headprune_kept): build each model from its own config, not one another pruned model changed"
        )


def _own_config(model) -> None:
    """Give the model (and every module that holds its config) its own copy of the config."""
    import copy

    shared = model.config
    own = copy.deepcopy(shared)
    for module in model.modules():
        if getattr(module, "config", None) is shared:
            module.config = own


# ----------------------------------------------------------------------------- gates


class HeadGates:
    """Multiply each head's output by a gate: a (layers x heads) tensor in original coordinates.

    Implemented as forward pre-hooks on the attention output projections, so it works on every
    transformers version (5.x silently ignores `head_mask`). The gates are differentiable: with
    `requires_grad=True`, `gates.grad` holds d loss / d gate after backward (Eq. 4.1). A gate of 0
    gives the same outputs as physically pruning that head. Use as a context manager or call
    `remove()`."""

    def __init__(self, model, gates: torch.Tensor | None = None, requires_grad: bool = True):
        n_layers, n_heads = original_shape(model.config)
        device = next(model.parameters()).device
        if gates is None:
            gates = torch.ones(n_layers, n_heads, device=device, requires_grad=requires_grad)
        if tuple(gates.shape) != (n_layers, n_heads):
            raise ValueError(f"gates must have shape ({n_layers}, {n_heads}), got {tuple(gates.shape)}")
        self.gates = gates
        family = family_of(model.config)
        d = _head_size(model.config)
        self._handles = []
        for module, (orig_layer, hs) in zip(encoder_layers(model), kept_heads(model).items()):
            index = torch.tensor(hs, device=device)
            hook = _make_gate_hook(self, orig_layer, index, d)
            self._handles.append(module_at(module, family.output).register_forward_pre_hook(hook))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> HeadGates:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _make_gate_hook(owner: HeadGates, layer: int, index: torch.Tensor, d: int):
    def hook(_module, args):
        (hidden,) = args[:1]
        shape = hidden.shape
        gate = owner.gates[layer].index_select(0, index).to(hidden.dtype)
        gated = (hidden.view(*shape[:-1], -1, d) * gate.view(-1, 1)).view(shape)
        return (gated, *args[1:])

    return hook
