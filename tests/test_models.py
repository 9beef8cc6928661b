"""models.py: loading both tiny families, unsupported families, fingerprint, counts, the real MiniLM."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import headprune
from headprune.checkpoint import (
    VERBATIM_TOKENIZER_FILES,
    load_model_files,
    model_files,
    save_pruned,
    save_tokenizer,
)
from headprune.errors import HeadpruneError
from headprune.families import FAMILIES, family_of
from headprune.models import (
    MAX_TOKENS,
    count_parameters,
    fingerprint,
    max_length,
    resolve_model_path,
)
from headprune.surgery import encoder_layers, kept_heads, prune_heads

# ----------------------------------------------------------------------------- tiny models


@pytest.mark.parametrize(
    ("fixture", "architecture", "tokenizer_type"),
    [("tiny_bert_dir", "BertForMaskedLM", "bert"), ("tiny_roberta_dir", "RobertaForMaskedLM", "roberta")],
)
def test_load_tiny_models(request, fixture: str, architecture: str, tokenizer_type: str) -> None:
    directory = request.getfixturevalue(fixture)
    model, tokenizer = headprune.load_model(str(directory))
    assert type(model).__name__ == architecture
    assert type(tokenizer).__name__.lower().startswith(tokenizer_type)
    assert model.config.headprune_fresh_mlm_head is False  # the tiny checkpoints have an MLM head
    assert model.config.headprune_source == str(directory)
    assert tokenizer.headprune_source == str(directory)
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert family_of(model.config) is FAMILIES[model.config.model_type]
    assert (model.config.num_hidden_layers, model.config.num_attention_heads) == (3, 4)
    batch = tokenizer(["someuser loved the movie", "no"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (*batch["input_ids"].shape, len(tokenizer))


def test_unsupported_family_is_named(tmp_path: Path) -> None:
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=10, bos_token_id=0, eos_token_id=0).save_pretrained(
        tmp_path
    )
    with pytest.raises(HeadpruneError) as err:
        headprune.load_model(str(tmp_path))
    message = str(err.value)
    assert message.startswith("unsupported model family 'gpt2': headprune supports ")
    assert "bert" in message and "roberta" in message and "\n" not in message


def test_missing_model_offline(tmp_path: Path) -> None:
    with pytest.raises(HeadpruneError) as err:
        headprune.load_model("no-such-model")
    assert str(err.value) == "model 'no-such-model': no such directory, and not a hub id"
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(HeadpruneError, match=r"^model '.*': cannot load its configuration"):
        headprune.load_model(str(tmp_path))


def test_resolve_model_path() -> None:
    path = Path(resolve_model_path("minilm"))
    assert (path / "config.json").is_file() and (path / "vocab.txt").is_file()
    assert resolve_model_path("MiniLM") == str(path)
    assert resolve_model_path("all-minilm-l6-v2") == str(path)
    assert resolve_model_path("some/hub-id") == "some/hub-id"


def test_fingerprint_stable_across_loads_and_changes_after_pruning(tiny_model_dir: Path) -> None:
    a, _ = headprune.load_model(str(tiny_model_dir))
    b, _ = headprune.load_model(str(tiny_model_dir))
    assert fingerprint(a) == fingerprint(b)
    assert len(fingerprint(a)) == 16
    b.config.headprune_source = "elsewhere"  # where it came from is not what it is
    assert fingerprint(a) == fingerprint(b)
    prune_heads(b, {1: [2]})
    assert fingerprint(b) != fingerprint(a)
    prune_heads(a, {1: [3]})
    assert fingerprint(b) != fingerprint(a)  # a different head, the same size


def test_fingerprint_sees_every_weight(tiny_bert_dir: Path) -> None:
    a, _ = headprune.load_model(str(tiny_bert_dir))
    before = fingerprint(a)
    with torch.no_grad():
        a.bert.encoder.layer[2].output.LayerNorm.bias[0] += 1e-3
    assert fingerprint(a) != before


def test_count_parameters_counts_tied_weights_once(tiny_model_dir: Path) -> None:
    model, tokenizer = headprune.load_model(str(tiny_model_dir))
    embeddings = model.get_input_embeddings().weight
    decoder = model.get_output_embeddings()
    assert decoder.weight is embeddings  # tied
    every = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    tied = embeddings.numel() + (decoder.bias.numel() if decoder.bias is not None else 0)
    assert count_parameters(model) == every - tied
    vocab, hidden = len(tokenizer), 32
    assert tied == vocab * hidden + vocab


def test_count_parameters_untied() -> None:
    layer = torch.nn.Linear(3, 4)
    shared = torch.nn.Sequential(layer, torch.nn.ReLU(), layer)
    assert count_parameters(shared) == 3 * 4 + 4
    assert count_parameters(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(3, 4))) == 32


@pytest.mark.parametrize(("fixture", "expected"), [("tiny_bert_dir", 128), ("tiny_roberta_dir", 128)])
def test_max_length(request, fixture: str, expected: int) -> None:
    model, tokenizer = headprune.load_model(str(request.getfixturevalue(fixture)))
    assert max_length(tokenizer, model.config) == expected <= MAX_TOKENS


def test_max_length_respects_small_models(tiny_roberta_dir: Path) -> None:
    from transformers import BertConfig, RobertaConfig

    model, tokenizer = headprune.load_model(str(tiny_roberta_dir))
    assert max_length(tokenizer, RobertaConfig(max_position_embeddings=66)) == 64  # RoBERTa offsets by 2
    assert max_length(tokenizer, BertConfig(max_position_embeddings=66)) == 66
    assert max_length(tokenizer, BertConfig(max_position_embeddings=514)) == MAX_TOKENS
    tokenizer.model_max_length = 50
    assert max_length(tokenizer, model.config) == 50
    tokenizer.model_max_length = int(1e30)  # "no limit" sentinel of transformers
    assert max_length(tokenizer, BertConfig(max_position_embeddings=512)) == MAX_TOKENS


def test_longest_input_fits(tiny_model_dir: Path) -> None:
    model, tokenizer = headprune.load_model(str(tiny_model_dir))
    limit = max_length(tokenizer, model.config)
    batch = tokenizer(["word " * 400], truncation=True, max_length=limit, return_tensors="pt")
    assert batch["input_ids"].shape[1] == limit
    with torch.no_grad():
        model(**batch)


# ----------------------------------------------------------------------------- verbatim tokenizer files


def test_save_pruned_keeps_verbatim_tokenizer_files(tiny_bert_dir: Path, tmp_path: Path) -> None:
    assert set(VERBATIM_TOKENIZER_FILES) == {"vocab.txt", "bpe.codes"}
    model, tokenizer = headprune.load_model(str(tiny_bert_dir))
    source = tmp_path / "source"
    source.mkdir()
    # Bytes that a re-save would never reproduce: a trailing marker line and CRLF merges.
    vocab = (tiny_bert_dir / "vocab.txt").read_bytes() + b"headprune-verbatim-marker\n"
    codes = b"t@@ h 1234\r\nth e 99\r\n#version: made-up\r\n"
    (source / "vocab.txt").write_bytes(vocab)
    (source / "bpe.codes").write_bytes(codes)
    tokenizer.headprune_source = str(source)
    prune_heads(model, {0: [1]})
    out = save_pruned(model, tokenizer, tmp_path / "pruned")
    assert (out / "vocab.txt").read_bytes() == vocab
    assert (out / "bpe.codes").read_bytes() == codes


def test_save_tokenizer_without_verbatim_files(tiny_roberta_dir: Path, tmp_path: Path) -> None:
    _, tokenizer = headprune.load_model(str(tiny_roberta_dir))
    save_tokenizer(tokenizer, tmp_path)
    assert not (tmp_path / "vocab.txt").exists() and not (tmp_path / "bpe.codes").exists()
    assert (tmp_path / "tokenizer_config.json").is_file()


def test_save_tokenizer_into_its_own_source(tiny_bert_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bert_dir, copy)
    _, tokenizer = headprune.load_model(str(copy))
    original = (copy / "vocab.txt").read_bytes()
    save_tokenizer(tokenizer, copy)  # source == destination: nothing to copy, no error
    assert (copy / "vocab.txt").read_bytes() == original


# ----------------------------------------------------------------------------- the model in memory


@pytest.mark.parametrize("pruned", [{}, {0: [1], 2: [0, 1, 2, 3]}], ids=["whole", "pruned"])
def test_model_files_rebuild_the_model_exactly(tiny_model_dir: Path, tmp_path: Path, sample_texts, pruned) -> None:
    """What a Ray worker is sent (bytes only) rebuilds the same module tree, weights, config, pooler
    state and tokenizer: the same outputs and fingerprint, the verbatim tokenizer files unchanged."""
    model, tokenizer = headprune.load_model(str(tiny_model_dir))
    if pruned:
        prune_heads(model, pruned)  # a layer without some heads, a layer removed whole
    hidden = model.config.hidden_size
    model.headprune_pooler_state = {"dense.weight": torch.randn(hidden, hidden), "dense.bias": torch.randn(hidden)}
    source = tmp_path / "source"
    source.mkdir()
    vocab = b"[PAD]\nheadprune-verbatim-marker\r\n"  # bytes a re-save would never reproduce
    (source / "vocab.txt").write_bytes(vocab)
    tokenizer.headprune_source = str(source)

    files = model_files(model, tokenizer)
    assert all(isinstance(name, str) and isinstance(content, bytes) for name, content in files.items())
    assert {"config.json", "model.safetensors", "headprune.json"} <= set(files)
    assert files["vocab.txt"] == vocab
    again, tok = load_model_files(files, tmp_path / "rebuilt")
    assert type(again) is type(model) and not again.training
    assert [(n, type(m)) for n, m in again.named_modules()] == [(n, type(m)) for n, m in model.named_modules()]
    ours, theirs = model.state_dict(), again.state_dict()
    assert list(theirs) == list(ours) and all(torch.equal(theirs[k], ours[k]) for k in ours)
    assert again.get_output_embeddings().weight is again.get_input_embeddings().weight  # still tied
    assert fingerprint(again) == fingerprint(model)
    assert kept_heads(again) == kept_heads(model)
    assert again.config.headprune_fresh_mlm_head is False and again.config.headprune_source == str(tiny_model_dir)
    assert again.headprune_pooler_state.keys() == model.headprune_pooler_state.keys()
    assert all(torch.equal(again.headprune_pooler_state[k], v) for k, v in model.headprune_pooler_state.items())
    assert tok.headprune_source == str(tmp_path / "rebuilt")
    assert (tmp_path / "rebuilt" / "vocab.txt").read_bytes() == vocab
    assert type(tok) is type(tokenizer) and len(tok) == len(tokenizer)
    assert (tok.pad_token_id, tok.mask_token, tok.all_special_ids) == (
        tokenizer.pad_token_id, tokenizer.mask_token, tokenizer.all_special_ids)
    batch = tokenizer(sample_texts, padding=True, return_tensors="pt")
    assert torch.equal(tok(sample_texts, padding=True, return_tensors="pt")["input_ids"], batch["input_ids"])
    with torch.no_grad():
        expected = model(**batch, output_hidden_states=True)
        got = again(**batch, output_hidden_states=True)
    assert torch.equal(got.logits, expected.logits)
    assert len(got.hidden_states) == len(expected.hidden_states) == model.config.num_hidden_layers + 1
    assert all(torch.equal(a, b) for a, b in zip(got.hidden_states, expected.hidden_states))


# ----------------------------------------------------------------------------- the real MiniLM


def _param_count_of_heads(config, n_heads: int) -> int:
    d = config.hidden_size // config.num_attention_heads
    return n_heads * (3 * (d * config.hidden_size + d) + d * config.hidden_size)


@pytest.mark.slow
def test_minilm_prune_save_reload(tmp_path: Path) -> None:
    model, tokenizer = headprune.load_model("minilm")
    config = model.config
    assert config.headprune_fresh_mlm_head is True
    assert (config.num_hidden_layers, config.num_attention_heads, config.hidden_size) == (6, 12, 384)
    assert max_length(tokenizer, config) == 128
    texts = [
        "someuser big fan of natalie portman since closer",
        "colin firth better win the oscar. ffffffffascinating!",
        "i did not like the hobbit at all someurl",
    ]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")

    before = count_parameters(model)
    layer3 = sum(p.numel() for p in encoder_layers(model)[3].parameters())
    prune_heads(model, {0: [1, 2], 3: list(range(12))})
    after = count_parameters(model)
    print(f"\nMiniLM parameters: {before:,} before, {after:,} after pruning ({before - after:,} fewer)")
    assert before - after == _param_count_of_heads(config, 2) + layer3
    assert layer3 == 4 * (384 * 384 + 384) + 4 * 384 + 2 * 384 * 1536 + 1536 + 384
    assert len(encoder_layers(model)) == 5 and model.config.num_hidden_layers == 5
    assert kept_heads(model)[0] == [0, *range(3, 12)] and 3 not in kept_heads(model)

    with torch.no_grad():
        expected = model(**batch).logits
    out = save_pruned(model, tokenizer, tmp_path / "minilm-pruned")
    assert (out / "vocab.txt").read_bytes() == (Path(resolve_model_path("minilm")) / "vocab.txt").read_bytes()
    again, tok = headprune.load_model(str(out))
    assert len(encoder_layers(again)) == 5
    assert count_parameters(again) == after
    assert again.config.headprune_fresh_mlm_head is True
    assert tok(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    with torch.no_grad():
        got = again(**batch).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert fingerprint(again) == fingerprint(model)
