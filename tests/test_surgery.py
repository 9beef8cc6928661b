"""surgery.py on both tiny families: gates vs physical pruning, shapes, coordinates, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import headprune
from headprune.checkpoint import load_pruned, save_pruned
from headprune.errors import HeadpruneError
from headprune.models import count_parameters
from headprune.surgery import (
    HeadGates,
    encoder_layers,
    format_head_spec,
    kept_heads,
    normalize_heads,
    original_shape,
    parse_head_spec,
    prune_heads,
    pruned_heads,
)

ATOL = 1e-5
N_LAYERS, N_HEADS, HIDDEN = 3, 4, 32
D = HIDDEN // N_HEADS


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture
def loaded(tiny_model_dir: Path):
    """(model, tokenizer) of each tiny family, freshly loaded (tests prune in place)."""
    return headprune.load_model(str(tiny_model_dir))


@pytest.fixture
def batch(loaded, sample_texts):
    _, tokenizer = loaded
    return tokenizer(sample_texts, padding=True, truncation=True, max_length=32, return_tensors="pt")


def _head_params(d: int = D, hidden: int = HIDDEN) -> int:
    """Parameters one head holds: its Q, K, V rows (weights and biases) and its output-projection columns."""
    return 3 * (d * hidden + d) + d * hidden


def _layer_params(layer: torch.nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


# ----------------------------------------------------------------------------- gates vs pruning


@pytest.mark.parametrize(
    "heads",
    [
        {0: [1]},
        {0: [0, 3], 2: [1]},
        {0: [0, 1, 2], 1: [3], 2: [0, 2]},
    ],
)
def test_zero_gate_equals_physical_pruning(loaded, batch, heads) -> None:
    model, _ = loaded
    gates = torch.ones(N_LAYERS, N_HEADS)
    for layer, hs in heads.items():
        gates[layer, hs] = 0.0
    with HeadGates(model, gates.clone(), requires_grad=False):
        gated = _logits(model, batch)
    full = _logits(model, batch)
    prune_heads(model, heads)
    pruned = _logits(model, batch)
    assert not torch.allclose(gated, full, atol=1e-3)  # the gates did something
    torch.testing.assert_close(pruned, gated, atol=ATOL, rtol=0)
    for layer, hs in heads.items():
        attention = encoder_layers(model)[layer].attention.self
        assert attention.query.weight.shape == ((N_HEADS - len(hs)) * D, HIDDEN)
        assert attention.num_attention_heads == N_HEADS - len(hs)


def test_all_ones_gates_leave_outputs_unchanged(loaded, batch) -> None:
    model, _ = loaded
    full = _logits(model, batch)
    with HeadGates(model) as gates:
        assert gates.gates.shape == (N_LAYERS, N_HEADS) and gates.gates.requires_grad
        gated = _logits(model, batch)
    torch.testing.assert_close(gated, full, atol=0, rtol=0)
    after = _logits(model, batch)  # hooks removed on exit
    torch.testing.assert_close(after, full, atol=0, rtol=0)


def test_gates_get_nonzero_gradients(loaded, batch) -> None:
    model, tokenizer = loaded
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    inputs = {**batch, "input_ids": batch["input_ids"].clone()}
    inputs["input_ids"][:, 2] = tokenizer.mask_token_id  # an MLM objective over the batch
    gates = HeadGates(model)
    try:
        loss = model(**inputs, labels=labels).loss
        loss.backward()
    finally:
        gates.remove()
    grad = gates.gates.grad
    assert grad is not None and grad.shape == (N_LAYERS, N_HEADS)
    assert torch.isfinite(grad).all()
    assert (grad != 0).all(), grad


def test_gates_on_a_pruned_model_use_original_coordinates(loaded, batch) -> None:
    model, _ = loaded
    prune_heads(model, {0: [0, 1, 2, 3], 1: [2]})
    gates = torch.ones(N_LAYERS, N_HEADS)
    gates[2, 3] = 0.0
    gates[1, 0] = 0.0
    with HeadGates(model, gates, requires_grad=False):
        gated = _logits(model, batch)
    prune_heads(model, {2: [3], 1: [0]})
    torch.testing.assert_close(_logits(model, batch), gated, atol=ATOL, rtol=0)


def test_gates_shape_is_checked(loaded) -> None:
    model, _ = loaded
    with pytest.raises(ValueError, match=r"gates must have shape \(3, 4\), got \(4, 3\)"):
        HeadGates(model, torch.ones(4, 3))


# ----------------------------------------------------------------------------- shapes and counts


def test_parameter_count_shrinks_by_exact_head_sizes(loaded) -> None:
    model, _ = loaded
    before = count_parameters(model)
    heads = {0: [1, 2], 2: [0]}
    prune_heads(model, heads)
    assert count_parameters(model) == before - 3 * _head_params()
    # Each shape, from the config: Q/K/V lose rows (and bias entries), the output loses columns.
    for layer, hs in heads.items():
        module = encoder_layers(model)[layer]
        kept = (N_HEADS - len(hs)) * D
        for name in ("query", "key", "value"):
            linear = getattr(module.attention.self, name)
            assert linear.weight.shape == (kept, HIDDEN) and linear.bias.shape == (kept,)
        output = module.attention.output.dense
        assert output.weight.shape == (HIDDEN, kept) and output.bias.shape == (HIDDEN,)


def test_pruning_draws_nothing_from_the_global_rng(loaded) -> None:
    """The batched engine prunes copies (for sizes) in threads while other models train with
    dropout from torch's global RNG: pruning must leave that RNG where it was."""
    model, _ = loaded
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    prune_heads(model, {0: [1, 2], 2: [0]})
    assert torch.equal(torch.rand(4), expected)


def test_layer_removal(loaded, batch) -> None:
    model, _ = loaded
    before = count_parameters(model)
    layer1 = _layer_params(encoder_layers(model)[1])
    assert layer1 == 4 * (HIDDEN * HIDDEN + HIDDEN) + 2 * 2 * HIDDEN + 2 * HIDDEN * 64 + 64 + HIDDEN
    prune_heads(model, {1: list(range(N_HEADS)), 2: [3]})
    assert len(encoder_layers(model)) == 2
    assert model.config.num_hidden_layers == 2
    assert kept_heads(model) == {0: [0, 1, 2, 3], 2: [0, 1, 2]}
    assert pruned_heads(model) == [(1, 0), (1, 1), (1, 2), (1, 3), (2, 3)]
    assert original_shape(model.config) == (N_LAYERS, N_HEADS)
    assert count_parameters(model) == before - layer1 - _head_params()
    assert _logits(model, batch).shape[:2] == batch["input_ids"].shape  # still runs


def test_removing_a_layer_is_not_gating_its_heads(loaded, batch) -> None:
    # The feed-forward of a removed layer goes too, so outputs differ from all-zero gates.
    model, _ = loaded
    gates = torch.ones(N_LAYERS, N_HEADS)
    gates[1] = 0.0
    with HeadGates(model, gates, requires_grad=False):
        gated = _logits(model, batch)
    prune_heads(model, {1: list(range(N_HEADS))})
    assert not torch.allclose(_logits(model, batch), gated, atol=1e-3)


def test_heads_are_named_in_original_coordinates_after_layer_removal(loaded, batch) -> None:
    model, _ = loaded
    prune_heads(model, {0: list(range(N_HEADS))})
    assert list(kept_heads(model)) == [1, 2]
    gates = torch.ones(N_LAYERS, N_HEADS)
    gates[2, 1] = 0.0
    with HeadGates(model, gates, requires_grad=False):
        expected = _logits(model, batch)
    size_before = count_parameters(model)
    prune_heads(model, [(2, 1)])
    # Original layer 2 is now at position 1; original layer 1 (position 0) is untouched.
    assert kept_heads(model) == {1: [0, 1, 2, 3], 2: [0, 2, 3]}
    assert encoder_layers(model)[0].attention.self.query.weight.shape == (N_HEADS * D, HIDDEN)
    assert encoder_layers(model)[1].attention.self.query.weight.shape == ((N_HEADS - 1) * D, HIDDEN)
    assert count_parameters(model) == size_before - _head_params()
    torch.testing.assert_close(_logits(model, batch), expected, atol=ATOL, rtol=0)
    # A head of the removed layer, or one already pruned, is ignored; a wrong coordinate is refused.
    prune_heads(model, {0: [2], 2: [1]})
    assert kept_heads(model) == {1: [0, 1, 2, 3], 2: [0, 2, 3]}
    with pytest.raises(HeadpruneError, match="layer 3 does not exist"):
        prune_heads(model, {3: [0]})


def test_layer_idx_follows_the_new_positions(loaded) -> None:
    model, _ = loaded
    prune_heads(model, {0: list(range(N_HEADS))})
    for position, module in enumerate(encoder_layers(model)):
        for sub in module.modules():
            if hasattr(sub, "layer_idx"):
                assert sub.layer_idx == position


def test_pruning_every_head_is_refused(loaded) -> None:
    model, _ = loaded
    every = {layer: list(range(N_HEADS)) for layer in range(N_LAYERS)}
    with pytest.raises(
        HeadpruneError, match="cannot prune every head of the model: at least one head must remain"
    ):
        prune_heads(model, every)
    assert kept_heads(model) == {layer: list(range(N_HEADS)) for layer in range(N_LAYERS)}  # untouched
    prune_heads(model, {0: list(range(N_HEADS)), 1: list(range(N_HEADS))})
    with pytest.raises(HeadpruneError, match="at least one head must remain"):
        prune_heads(model, {2: list(range(N_HEADS))})


def test_pruning_twice_accumulates(loaded, batch) -> None:
    model, _ = loaded
    reference = headprune.load_model(model.config.headprune_source)[0]
    before = count_parameters(model)
    prune_heads(model, {0: [1], 1: [0, 3]})
    prune_heads(model, {0: [2], 1: [3], 2: [0]})  # (1, 3) again: ignored
    assert pruned_heads(model) == [(0, 1), (0, 2), (1, 0), (1, 3), (2, 0)]
    assert count_parameters(model) == before - 5 * _head_params()
    prune_heads(reference, {0: [1, 2], 1: [0, 3], 2: [0]})
    torch.testing.assert_close(_logits(model, batch), _logits(reference, batch), atol=ATOL, rtol=0)


def test_prune_heads_accepts_pairs_and_dicts(loaded) -> None:
    model, _ = loaded
    prune_heads(model, [[0, 3], (2, 1), (0, 3)])
    assert pruned_heads(model) == [(0, 3), (2, 1)]
    prune_heads(model, {})
    assert pruned_heads(model) == [(0, 3), (2, 1)]


def test_normalize_heads_validates(loaded) -> None:
    model, _ = loaded
    assert normalize_heads({"2": [3, 1, 1], 0: []}, model.config) == {2: [1, 3]}
    with pytest.raises(HeadpruneError, match=r"layer 3 does not exist \(the model has 3\)"):
        normalize_heads({3: [0]}, model.config)
    with pytest.raises(HeadpruneError, match=r"head 4 of layer 0 does not exist \(4 per layer\)"):
        normalize_heads([(0, 4)], model.config)
    with pytest.raises(HeadpruneError, match="layer -1 does not exist"):
        normalize_heads([(-1, 0)], model.config)


# ----------------------------------------------------------------------------- head specs


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", {}),
        ("  ", {}),
        ("0:1,2;3:*", {0: [1, 2], 3: list(range(12))}),
        ("4-7", None),
        ("1:4-7", {1: [4, 5, 6, 7]}),
        ("1: 4 - 6 , 0 ; 2:11", {1: [0, 4, 5, 6], 2: [11]}),
        ("0:1;0:0;", {0: [0, 1]}),
        ("5:3,3,2-3", {5: [2, 3]}),
    ],
)
def test_parse_head_spec(spec: str, expected) -> None:
    if expected is None:
        with pytest.raises(HeadpruneError, match="cannot read '4-7'"):
            parse_head_spec(spec, 12, 12)
        return
    assert parse_head_spec(spec, 12, 12) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0", "--prune: cannot read '0'; write LAYER:HEADS pairs such as '0:1,2;3:*'"),
        ("0:", "--prune: cannot read '0:'"),
        ("a:1", "--prune: cannot read 'a:1'"),
        ("0:1,,2", "--prune: cannot read '0:1,,2'"),
        ("0:-1", "--prune: cannot read '0:-1'"),
        ("0,1:2", "--prune: cannot read '0,1:2'"),
        ("3:0", "--prune: layer 3 does not exist (the model has 3: 0-2)"),
        ("0:4", "--prune: head 4 of layer 0 does not exist (4 per layer: 0-3)"),
        ("1:2-9", "--prune: head 4 of layer 1 does not exist (4 per layer: 0-3)"),
        ("0:1,x", "--prune: cannot read '0:1,x'; write LAYER:HEADS pairs such as '0:1,2;3:*' (heads 0-based, "
                  "ranges like 4-7, * for all); 'x' is not a head number or range"),
        ("x:1", "--prune: cannot read 'x:1'; write LAYER:HEADS pairs such as '0:1,2;3:*' (heads 0-based, "
                "ranges like 4-7, * for all); 'x' is not a layer number"),
        ("0:1;2", "--prune: cannot read '2'; write LAYER:HEADS pairs such as '0:1,2;3:*' (heads 0-based, "
                  "ranges like 4-7, * for all); no ':' between the layer and its heads"),
        ("0:3-1", "--prune: '3-1' in '0:3-1' is a backwards range (write 1-3)"),  # used to prune nothing
    ],
)
def test_parse_head_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(HeadpruneError) as err:
        parse_head_spec(spec, N_LAYERS, N_HEADS)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_format_head_spec_round_trips() -> None:
    heads = {0: [1, 2], 3: list(range(12)), 5: [7]}
    text = format_head_spec(heads, 12)
    assert text == "0:1,2;3:*;5:7"
    assert parse_head_spec(text, 12, 12) == heads


# ----------------------------------------------------------------------------- save and load


def test_save_and_load_pruned_round_trip(loaded, batch, tmp_path: Path) -> None:
    model, tokenizer = loaded
    prune_heads(model, {0: [0, 2], 1: list(range(N_HEADS)), 2: [3]})
    expected = _logits(model, batch)
    out = save_pruned(model, tokenizer, tmp_path / "pruned", extra={"note": "test"})
    meta = json.loads((out / "headprune.json").read_text())
    assert meta["format"] == "headprune-pruned-model/3"
    assert meta["architecture"] == type(model).__name__ and meta["model_type"] == model.config.model_type
    assert meta["original_layers"] == N_LAYERS and meta["heads_per_layer"] == N_HEADS
    assert meta["kept"] == {"0": [1, 3], "2": [0, 1, 2]}
    assert meta["pruned"] == [[0, 0], [0, 2], [1, 0], [1, 1], [1, 2], [1, 3], [2, 3]]
    assert meta["note"] == "test"
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert (out / "tokenizer_config.json").is_file()

    for loader in (load_pruned, headprune.load_model):
        again, tok = loader(str(out))
        assert type(again) is type(model)
        assert kept_heads(again) == kept_heads(model)
        assert pruned_heads(again) == pruned_heads(model)
        assert count_parameters(again) == count_parameters(model)
        assert len(encoder_layers(again)) == 2
        assert not again.training
        assert tok(["hello world"])["input_ids"] == tokenizer(["hello world"])["input_ids"]
        torch.testing.assert_close(_logits(again, batch), expected, atol=ATOL, rtol=0)
        for name, tensor in model.state_dict().items():
            torch.testing.assert_close(again.state_dict()[name], tensor, atol=0, rtol=0, msg=name)


def test_saved_pruned_model_can_be_pruned_further(loaded, batch, tmp_path: Path) -> None:
    model, tokenizer = loaded
    prune_heads(model, {0: list(range(N_HEADS))})
    save_pruned(model, tokenizer, tmp_path / "a")
    again, tok = load_pruned(tmp_path / "a")
    prune_heads(again, [(2, 1)])
    prune_heads(model, [(2, 1)])
    save_pruned(again, tok, tmp_path / "b")
    final, _ = headprune.load_model(str(tmp_path / "b"))
    assert kept_heads(final) == {1: [0, 1, 2, 3], 2: [0, 2, 3]}
    torch.testing.assert_close(_logits(final, batch), _logits(model, batch), atol=ATOL, rtol=0)


def test_save_unpruned_model(loaded, batch, tmp_path: Path) -> None:
    model, _ = loaded
    save_pruned(model, None, tmp_path / "plain")
    again, tok = load_pruned(tmp_path / "plain")
    assert tok is None
    assert pruned_heads(again) == []
    torch.testing.assert_close(_logits(again, batch), _logits(model, batch), atol=ATOL, rtol=0)


def test_load_pruned_refuses_other_directories(tmp_path: Path) -> None:
    with pytest.raises(HeadpruneError) as err:
        load_pruned(tmp_path)
    assert str(err.value) == f"{tmp_path}: not a pruned model directory (no headprune.json)"
