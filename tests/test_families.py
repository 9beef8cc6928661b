"""families.py: every row of the table matches the transformers models of its family.

Each family gets a tiny random model built here (hidden 32, 2 layers x 4 heads, vocabulary 100).
Its `hidden_act` is relu, so a head that applies gelu whatever the config says (RoBERTa, ELECTRA)
is told apart from one that follows the config (BERT)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from headprune.errors import HeadpruneError
from headprune.families import FAMILIES, family_of, module_at
from headprune.models import max_length

HIDDEN, INTERMEDIATE, VOCAB = 32, 48, 100


def _config(model_type: str):
    from transformers import AutoConfig

    shape = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=INTERMEDIATE, max_position_embeddings=40, hidden_act="relu")
    if model_type == "electra":
        shape["embedding_size"] = 16  # ELECTRA's generator head maps back to the embedding width
    return AutoConfig.for_model(model_type, **shape)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_model(request):
    """(model_type, config, its masked-LM model) for each row of the table."""
    from transformers import AutoModelForMaskedLM

    torch.manual_seed(0)
    config = _config(request.param)
    return request.param, config, AutoModelForMaskedLM.from_config(config).eval()


def test_family_of_reads_the_table(family_model) -> None:
    model_type, config, _ = family_model
    assert family_of(config) is FAMILIES[model_type]


def test_family_of_names_the_supported_families() -> None:
    with pytest.raises(HeadpruneError, match=r"^unsupported model family 'gpt2': headprune supports bert, "):
        family_of(type("Config", (), {"model_type": "gpt2"})())


def test_layer_paths_resolve(family_model) -> None:
    _, config, model = family_model
    family = family_of(config)
    layers = module_at(model.base_model, family.layers)
    assert isinstance(layers, nn.ModuleList) and len(layers) == config.num_hidden_layers
    for layer in layers:
        attention = module_at(layer, family.attention)
        for path, shape in ((family.query, (HIDDEN, HIDDEN)), (family.key, (HIDDEN, HIDDEN)),
                            (family.value, (HIDDEN, HIDDEN)), (family.output, (HIDDEN, HIDDEN)),
                            (family.intermediate, (INTERMEDIATE, HIDDEN)), (family.ffn_output, (HIDDEN, INTERMEDIATE))):
            linear = module_at(layer, path)
            assert isinstance(linear, nn.Linear) and tuple(linear.weight.shape) == shape, path
        for path in (family.query, family.key, family.value):
            assert any(m is module_at(layer, path) for m in attention.modules()), f"{path} outside {family.attention}"
        for path in (family.attention_norm, family.output_norm):
            assert isinstance(module_at(layer, path), nn.LayerNorm), path


def test_embedding_paths_and_positions_match_transformers(family_model) -> None:
    """The table's position numbering (`padded_positions`, `position_offset`) is the one the
    family's own embeddings compute: their output equals the sum rebuilt from the table's paths."""
    _, config, model = family_model
    family = family_of(config)
    base = model.base_model
    word, position, token_type = (module_at(base, path) for path in (
        family.word_embeddings, family.position_embeddings, family.token_type_embeddings))
    norm = module_at(base, family.embedding_norm)
    assert all(isinstance(m, nn.Embedding) for m in (word, position, token_type)) and isinstance(norm, nn.LayerNorm)
    pad = config.pad_token_id
    ids = torch.tensor([[5, 6, 7, 8, pad, pad], [9, 10, pad, pad, pad, pad]])
    if family.padded_positions:
        assert position.padding_idx == pad and family.position_offset == pad + 1
        real = (ids != pad).long()
        positions = torch.cumsum(real, dim=1) * real + pad
    else:
        assert position.padding_idx is None and family.position_offset == 0
        positions = torch.arange(ids.shape[1]).expand_as(ids)
    with torch.no_grad():
        expected = base.embeddings(input_ids=ids)
        rebuilt = norm(word(ids) + position(positions) + token_type(torch.zeros_like(ids)))
    torch.testing.assert_close(rebuilt, expected)


def test_mlm_head_paths_compute_the_heads_logits(family_model) -> None:
    _, config, model = family_model
    family = family_of(config)
    from transformers.activations import ACT2FN

    hidden = torch.randn(3, HIDDEN, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hidden
        for path in family.mlm_head:
            expected = module_at(model, path)(expected)
        act = ACT2FN[family.mlm_activation or config.hidden_act]
        y = module_at(model, family.mlm_norm)(act(module_at(model, family.mlm_dense)(hidden)))
        rebuilt = module_at(model, family.mlm_decoder)(y)
    assert expected.shape == (3, VOCAB)
    torch.testing.assert_close(rebuilt, expected)
    head_names = {name for path in family.mlm_head for name, _ in module_at(model, path).named_parameters(path)}
    assert head_names and all(name.startswith(family.mlm_head_prefixes) for name in head_names)


def test_pooler_is_where_the_sequence_classifier_keeps_it(family_model) -> None:
    from transformers import AutoModelForSequenceClassification

    _, config, _ = family_model
    family = family_of(config)
    classifier = AutoModelForSequenceClassification.from_config(config)
    if family.pooler is None:
        assert getattr(classifier.base_model, "pooler", None) is None
    else:
        pooler = module_at(classifier.base_model, family.pooler)
        assert isinstance(pooler, nn.Module) and any(True for _ in pooler.parameters())


def test_max_length_reads_the_position_offset(monkeypatch) -> None:
    from transformers import RobertaConfig

    tokenizer = type("Tokenizer", (), {"model_max_length": 512})()
    assert max_length(tokenizer, RobertaConfig(max_position_embeddings=66)) == 64
    monkeypatch.setitem(FAMILIES, "roberta", dataclasses.replace(FAMILIES["roberta"], position_offset=5))
    assert max_length(tokenizer, RobertaConfig(max_position_embeddings=66)) == 61
