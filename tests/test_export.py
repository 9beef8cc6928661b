"""export.py: a run's chosen model (or explicit heads) saved, loaded back identical, with a correct model card."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import headprune
from _tiny import CHOSEN_PRUNED, build_tiny_bert, make_summary, write_summary
from headprune.checkpoint import file_size, saved_size
from headprune.errors import HeadpruneError
from headprune.export import export_heads, export_model
from headprune.models import count_parameters, fingerprint
from headprune.surgery import kept_heads

CLI = [sys.executable, "-c", "from headprune.cli import main; main()"]

# Every export times the model for its card: one thread keeps that quick on a busy shared machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert-export"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_dir) -> Path:
    model, _ = headprune.load_model(str(tiny_dir))
    summary = make_summary(str(tiny_dir))
    summary["model"].update(fingerprint=fingerprint(model), n_params=count_parameters(model),
                            size_bytes=saved_size(model))
    directory = tmp_path_factory.mktemp("export-run")
    write_summary(directory, summary)
    return directory


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(["someuser big fan of natalie portman", "i hate mondays someurl"], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def test_exported_model_matches_the_in_memory_pruned_model(run_dir, tiny_dir, tmp_path):
    out = export_model(run_dir, "MOIH1", tmp_path / "moih1")
    loaded, tokenizer = headprune.load_pruned(out)
    reference, ref_tokenizer = headprune.load_model(str(tiny_dir))
    headprune.prune_heads(reference, CHOSEN_PRUNED["MOIH1"])
    assert kept_heads(loaded) == {0: [0, 1, 3]}  # layer 1 removed whole
    assert loaded.config.num_hidden_layers == 1
    assert sorted(map(list, headprune.pruned_heads(loaded))) == sorted(CHOSEN_PRUNED["MOIH1"])
    torch.testing.assert_close(_logits(loaded, tokenizer), _logits(reference, ref_tokenizer), rtol=0, atol=0)
    meta = json.loads((out / "headprune.json").read_text())
    assert meta["base_model"] == str(tiny_dir) and meta["run_model"] == "MOIH1"


def test_model_card(run_dir, tiny_dir, tmp_path):
    out = export_model(run_dir, "MOIH1", tmp_path / "card")
    card = (out / "README.md").read_text()
    model, _ = headprune.load_pruned(out)
    complete, _ = headprune.load_model(str(tiny_dir))
    n, ref = count_parameters(model), count_parameters(complete)
    assert f"- Base model: `{tiny_dir}`" in card
    assert "- Heads pruned: 5 of 8 (62.50%): `0:2;1:*`" in card
    assert "- Layers removed (every head pruned): 1" in card
    assert "| 0 | 0, 1, 3 | 3 |" in card and "| 1 | removed | 0 |" in card
    assert f"| Parameters | {n:,} | {ref:,} | {100 * (n / ref - 1):+.2f}% |" in card
    size, ref_size = (out / "model.safetensors").stat().st_size, file_size(complete)
    assert f"| Saved size (bytes) | {size:,} | {ref_size:,} | {100 * (size / ref_size - 1):+.2f}% |" in card
    summary = json.loads((run_dir / "summary.json").read_text())
    own, cm = summary["generalization"]["MOIH1"]["aisopos"], summary["generalization"]["CM"]["aisopos"]
    assert (f"| aisopos | {100 * own['mean']:.2f} ({100 * own['std']:.2f}) | {100 * cm['mean']:.2f} "
            f"({100 * cm['std']:.2f}) | {own['pct_vs_cm']:+.2f}% | {{MOIH1}} > {{CM}} |") in card
    assert f'headprune.load_pruned("{out}")' in card
    assert "fingerprint mismatch" not in card


def test_complete_model_exports_unpruned(run_dir, tmp_path):
    out = export_model(run_dir, "CM", tmp_path / "cm")
    model, _ = headprune.load_pruned(out)
    assert headprune.pruned_heads(model) == []
    assert "(complete model)" in (out / "README.md").read_text()


def test_unknown_model_lists_the_available_names(run_dir, tmp_path):
    with pytest.raises(HeadpruneError, match=r"unknown model 'MXH9'.*CM, MOIH1, MA1H1, MOIH2"):
        export_model(run_dir, "MXH9", tmp_path / "x")


def test_base_model_of_another_shape_is_refused(tmp_path, tiny_dir):
    summary = make_summary(str(tiny_dir))
    summary["model"]["n_layers"] = 3
    write_summary(tmp_path / "run", summary)
    with pytest.raises(HeadpruneError, match="has 2 layers x 4 heads but the run's model has 3 x 4"):
        export_model(tmp_path / "run", "MOIH1", tmp_path / "x")


def test_export_heads_from_a_spec_or_pairs(tiny_dir, tmp_path):
    out = export_heads(str(tiny_dir), "0:1,2;1:*", tmp_path / "spec")
    model, _ = headprune.load_pruned(out)
    assert kept_heads(model) == {0: [0, 3]}
    assert "- Heads pruned: 6 of 8 (75.00%): `0:1,2;1:*`" in (out / "README.md").read_text()
    out = export_heads(str(tiny_dir), [(1, 2)], tmp_path / "pairs")
    assert headprune.pruned_heads(headprune.load_pruned(out)[0]) == [(1, 2)]
    with pytest.raises(HeadpruneError, match="at least one head must remain"):
        export_heads(str(tiny_dir), "0:*;1:*", tmp_path / "all")
    with pytest.raises(HeadpruneError, match="layer 5 does not exist"):
        export_heads(str(tiny_dir), "5:0", tmp_path / "bad")


def test_cli_export(tiny_dir, run_dir, tmp_path):
    ok = subprocess.run([*CLI, "export", "--base", str(tiny_dir), "--prune", "0:1", "--out", str(tmp_path / "o")],
                        check=False, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "saved:" in ok.stdout and (tmp_path / "o" / "README.md").is_file()
    bad = subprocess.run([*CLI, "export", str(run_dir), "--model", "NOPE", "--out", str(tmp_path / "n")],
                         check=False, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: unknown model 'NOPE'") and bad.stderr.count("\n") == 1


def test_a_head_pruned_export_names_its_own_classes(tiny_dir, tmp_path):
    """A layer that lost some heads has no transformers config of its family: config.json names the
    pruned model type and the classes transformers loads it with (`auto_map`), which `import headprune`
    registered here; headprune.json keeps the family's model type for `load_pruned`."""
    from transformers import AutoModel

    out = export_heads(str(tiny_dir), "0:1,2", tmp_path / "partial")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "headprune-pruned-bert" and "AutoModel" in config["auto_map"]
    assert json.loads((out / "headprune.json").read_text())["model_type"] == "bert"
    assert type(AutoModel.from_pretrained(out)).__name__ == "HeadprunedBertModel"
    model, _ = headprune.load_pruned(out)
    assert kept_heads(model) == {0: [0, 3], 1: [0, 1, 2, 3]} and model.config.model_type == "bert"
    card = (out / "README.md").read_text()
    assert f'AutoModel.from_pretrained("{out}", trust_remote_code=True)' in card
    assert f"headprune export {out} --format onnx" in card


def test_plain_transformers_loads_an_export_without_partial_layers_exactly(tiny_dir, tmp_path):
    from transformers import AutoModelForMaskedLM

    out = export_heads(str(tiny_dir), "1:*", tmp_path / "layers")
    assert json.loads((out / "config.json").read_text())["model_type"] == "bert"
    plain = AutoModelForMaskedLM.from_pretrained(out).eval()
    ours, tokenizer = headprune.load_pruned(out)
    torch.testing.assert_close(_logits(plain, tokenizer), _logits(ours, tokenizer), rtol=0, atol=0)
    card = (out / "README.md").read_text()
    assert "plain transformers loads it exactly" in card and "trust_remote_code" not in card


def test_format_1_directories_still_load(tiny_dir, tmp_path):
    """Before format 2, config.json kept the plain model type and headprune.json had no model_type."""
    out = export_heads(str(tiny_dir), "0:1,2", tmp_path / "v1")
    expected, tokenizer = headprune.load_pruned(out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    meta = json.loads((out / "headprune.json").read_text())
    del meta["model_type"]
    (out / "headprune.json").write_text(json.dumps({**meta, "format": "headprune-pruned-model/1"}))
    again, _ = headprune.load_pruned(out)
    torch.testing.assert_close(_logits(again, tokenizer), _logits(expected, tokenizer), rtol=0, atol=0)


def test_model_card_quotes_the_speed_measured_at_export(run_dir, tmp_path):
    import re

    card = (export_model(run_dir, "MOIH1", tmp_path / "speed") / "README.md").read_text()
    assert "## Inference speed (measured at export)" in card
    for model in ("complete", "pruned"):
        assert re.search(rf"\| PyTorch eager \| {model} \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+x \| [\d.]+x \|", card)
    assert "| PyTorch eager | complete |" in card and "1.00x | 1.00x |" in card
    assert "| onnxruntime |" not in card
