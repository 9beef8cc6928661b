"""An exported pruned model is a transformers model: from_pretrained, Trainer, pipeline and
save_pretrained use it exactly, without headprune (trust_remote_code) and with it (registered classes)."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file, save_model

import headprune
from headprune import export as export_module
from headprune.checkpoint import MODELING_FILE, PRUNED_MODEL_TYPE, load_pruned, save_pruned
from headprune.errors import HeadpruneError
from headprune.export import export_heads
from headprune.families import FAMILIES
from headprune.modeling_headprune import AUTO_CLASSES
from headprune.models import count_parameters
from headprune.surgery import kept_heads

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TESTS = Path(__file__).parent
# 3 layers x 4 heads: layer 0 keeps head 0, layer 1 heads 1-3, layer 2 goes whole.
SPEC = "0:1,2,3;1:0;2:*"
PRUNED = {0: [1, 2, 3], 1: [0], 2: [0, 1, 2, 3]}
KEPT = {0: [0], 1: [1, 2, 3]}
TWEETS = ["someuser big fan of natalie portman since closer, loved her in that movie", "i hate mondays someurl"]


def _with_pooler(source: Path, destination: Path, prefix: str) -> Path:
    """A copy of a tiny masked-LM checkpoint whose file also holds a pretrained-looking pooler (as
    the embedded MiniLM's and many BERT checkpoints' do)."""
    shutil.copytree(source, destination)
    file = destination / "model.safetensors"
    tensors = load_file(str(file))
    hidden = tensors[f"{prefix}.embeddings.word_embeddings.weight"].shape[1]
    generator = torch.Generator().manual_seed(7)
    tensors[f"{prefix}.pooler.dense.weight"] = torch.randn(hidden, hidden, generator=generator)
    tensors[f"{prefix}.pooler.dense.bias"] = torch.rand(hidden, generator=generator) - 0.5
    save_file(tensors, str(file), metadata={"format": "pt"})
    return destination


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_bert_dir, tiny_roberta_dir) -> dict[str, tuple[Path, Path]]:
    """{family: (checkpoint with a pooler, its export with uneven heads and layer 2 removed)}."""
    root = tmp_path_factory.mktemp("hf-export")
    out = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export_module, "MEASURE_BUDGET_S", 0.05)  # the card's timing is not tested here
        for family, source in (("bert", tiny_bert_dir), ("roberta", tiny_roberta_dir)):
            checkpoint = _with_pooler(source, root / f"{family}-checkpoint", family)
            out[family] = checkpoint, export_heads(str(checkpoint), SPEC, root / f"{family}-pruned")
    return out


def _run(mode: str, dirs: list[Path], tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if mode == "headprune":
        env["PYTHONPATH"] = os.pathsep.join(paths)
    else:  # accelerate may come from PYTHONPATH; headprune's source must not
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if not (Path(p) / "headprune").is_dir())
    result = tmp_path / f"{mode}.pt"
    done = subprocess.run([sys.executable, str(TESTS / "_hf_load.py"), mode, str(result), *map(str, dirs)],
                          capture_output=True, text=True, timeout=900, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(result, weights_only=False)


def _expected(directory: Path) -> tuple[torch.Tensor, int]:
    """headprune's own load of `directory`: the encoder's hidden states on the padded tweets, and the
    parameters of the encoder with the pooler it carries."""
    model, tokenizer = load_pruned(directory)
    batch = tokenizer(TWEETS, padding=True, return_tensors="pt")
    assert batch["attention_mask"].min() == 0  # the batch has padding
    with torch.no_grad():
        hidden = model.base_model(**batch).last_hidden_state
    pooler = sum(t.numel() for t in model.headprune_pooler_state.values())
    return hidden, count_parameters(model.base_model) + pooler


def _checkpoint_pooler(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The pooler in a checkpoint's file (`pooler.*` of a bare encoder, `<prefix>.pooler.*` otherwise)."""
    out = {}
    for name, tensor in load_file(str(checkpoint / "model.safetensors")).items():
        head, _, rest = name.partition("pooler.")
        if head in ("", "bert.", "roberta."):
            out[rest] = tensor
    return out


def _check(got: dict, out: Path, checkpoint: Path, family: str) -> None:
    """What a transformers user loaded from `out` is headprune's pruned model, with the checkpoint's pooler."""
    classes = AUTO_CLASSES[family]
    assert got["config"] == classes["AutoConfig"].__name__ and got["encoder"] == classes["AutoModel"].__name__
    hidden, n_params = _expected(out)
    torch.testing.assert_close(got["hidden"], hidden, rtol=0, atol=1e-5)
    pooler = _checkpoint_pooler(checkpoint)
    assert got["pooler"].keys() == pooler.keys() == {"dense.weight", "dense.bias"}
    assert all(torch.equal(got["pooler"][name], tensor) for name, tensor in pooler.items())
    assert got["encoder_keys"] == {"missing": set(), "unexpected": set()}
    assert got["mlm_keys"] == {"missing": set(), "unexpected": set()}
    assert got["classifier_keys"]["unexpected"] == set()
    assert got["classifier_keys"]["missing"] and all(k.startswith("classifier.")
                                                    for k in got["classifier_keys"]["missing"])
    assert len(got["pipeline"]) == 2 and set(got["pipeline"]) <= {"LABEL_0", "LABEL_1"}
    if "trainer" in got:  # transformers' Trainer needs accelerate (the test extra installs it)
        assert got["trainer"]["moved"] and torch.isfinite(torch.tensor(got["trainer"]["loss"]))
    torch.testing.assert_close(got["round_trip_hidden"], got["hidden"], rtol=0, atol=0)
    assert got["n_params"] == got["round_trip_params"] == n_params


@pytest.mark.parametrize("mode", ["plain", "headprune"])
def test_transformers_loads_the_export_exactly(exports, tmp_path, mode):
    """Without headprune (trust_remote_code=True) and with it (no trust_remote_code): hidden states equal
    load_pruned's on a padded batch, the checkpoint's pooler, no missing key but the classification
    head's, a Trainer step, a pipeline, and a save_pretrained -> from_pretrained round trip with the
    pruned model's parameter count."""
    results = _run(mode, [out for _, out in exports.values()], tmp_path)
    assert results["headprune_importable"] is (mode == "headprune")
    for family, (checkpoint, out) in exports.items():
        _check(results[str(out)], out, checkpoint, family)


@pytest.mark.slow
def test_the_embedded_minilm_export_loads_without_headprune(tmp_path):
    """The case of the report that asked for this: MiniLM (fresh masked-LM head, a pooler in the
    checkpoint) with uneven heads in two layers and layer 4 removed, loaded where headprune is not."""
    from headprune.models import resolve_model_path

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export_module, "MEASURE_BUDGET_S", 0.05)
        out = export_heads("minilm", "0:1,2,3;2:0,5,7,8;4:*", tmp_path / "pruned")
    assert json.loads((out / "config.json").read_text())["headprune_fresh_mlm_head"] is True
    results = _run("plain", [out], tmp_path)
    assert results["headprune_importable"] is False
    _check(results[str(out)], out, Path(resolve_model_path("minilm")), "bert")


def test_export_writes_the_template_and_auto_map(exports):
    template = Path(importlib.util.find_spec("headprune.modeling_headprune").origin)
    for family, (_, out) in exports.items():
        config = json.loads((out / "config.json").read_text())
        assert config["model_type"] == PRUNED_MODEL_TYPE.format(family) == AUTO_CLASSES[family]["AutoConfig"].model_type
        assert config["auto_map"] == {auto: f"modeling_headprune.{cls.__name__}"
                                      for auto, cls in AUTO_CLASSES[family].items()}
        assert config["headprune_kept"] == {str(k): v for k, v in KEPT.items()} and config["num_hidden_layers"] == 2
        assert config["headprune_pooler"] is True
        assert (out / MODELING_FILE).read_bytes() == template.read_bytes()
        assert json.loads((out / "headprune.json").read_text())["format"] == "headprune-pruned-model/3"


def test_the_template_imports_only_torch_and_transformers_and_knows_where_heads_are():
    source = Path(importlib.util.find_spec("headprune.modeling_headprune").origin).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0
            imported.add(node.module.split(".")[0])
    assert imported == {"torch", "transformers"}
    from headprune import modeling_headprune as template

    for family in AUTO_CLASSES:
        row = FAMILIES[family]
        assert template.LAYERS == row.layers and template.ATTENTION == row.attention
        assert template.PROJECTIONS == (row.query, row.key, row.value) and template.OUTPUT == row.output


def test_headprune_never_runs_the_directory_modeling_file(exports, tmp_path):
    """With headprune imported, loading goes through its registered classes: a modeling file that
    would fail if run is never run (by from_pretrained nor by load_pruned)."""
    from transformers import AutoModel

    out = shutil.copytree(exports["bert"][1], tmp_path / "tampered")
    (out / MODELING_FILE).write_text("raise RuntimeError('the directory file ran')\n")
    expected, _ = _expected(exports["bert"][1])
    model = AutoModel.from_pretrained(out)
    model_, tokenizer = load_pruned(out)
    batch = tokenizer(TWEETS, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).last_hidden_state, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(model_.base_model(**batch).last_hidden_state, expected, rtol=0, atol=0)


def test_plain_transformers_without_trust_remote_code_refuses(exports, tmp_path):
    """Without headprune and without trust_remote_code, transformers refuses (never random weights)."""
    code = ("import sys; sys.modules['headprune'] = None\n"
            "from transformers import AutoModel\n"
            "try:\n    AutoModel.from_pretrained(sys.argv[1])\nexcept ValueError as err:\n"
            "    print('refused:', 'trust_remote_code' in str(err))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", code, str(exports["bert"][1])], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600, env=env, check=False)
    assert done.stdout.strip().endswith("refused: True"), done.stderr[-2000:]


def test_load_pruned_keeps_the_pooler_and_save_pruned_writes_it_again(exports, tmp_path):
    checkpoint, out = exports["roberta"]
    model, tokenizer = load_pruned(out)
    file = load_file(str(checkpoint / "model.safetensors"))
    assert {k: torch.equal(v, file[f"roberta.pooler.{k}"]) for k, v in model.headprune_pooler_state.items()} == {
        "dense.weight": True, "dense.bias": True}
    assert kept_heads(model) == KEPT
    again = save_pruned(model, tokenizer, tmp_path / "again")
    assert load_file(str(again / "model.safetensors")).keys() == load_file(str(out / "model.safetensors")).keys()


def test_old_formats_still_load(exports, tmp_path):
    """Format 2 (pruned model type, no auto_map, no modeling file, no pooler in the weights) and format
    1 (plain model type) directories load with load_pruned, as they did."""
    out = exports["bert"][1]
    expected, tokenizer = load_pruned(out)
    old = shutil.copytree(out, tmp_path / "v2")
    config = json.loads((old / "config.json").read_text())
    for key in ("auto_map", "headprune_pooler"):
        del config[key]
    (old / "config.json").write_text(json.dumps(config))
    (old / MODELING_FILE).unlink()
    plain, _ = load_pruned(out)
    del plain.headprune_pooler_state
    save_model(plain, str(old / "model.safetensors"), metadata={"format": "pt"})
    meta = json.loads((old / "headprune.json").read_text())
    (old / "headprune.json").write_text(json.dumps({**meta, "format": "headprune-pruned-model/2"}))
    batch = tokenizer(TWEETS, padding=True, return_tensors="pt")
    for version in (2, 1):
        if version == 1:
            (old / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
            del meta["model_type"]
            (old / "headprune.json").write_text(json.dumps({**meta, "format": "headprune-pruned-model/1"}))
        again, _ = load_pruned(old)
        assert not getattr(again, "headprune_pooler_state", None)
        with torch.no_grad():
            torch.testing.assert_close(again(**batch).logits, expected(**batch).logits, rtol=0, atol=0)


def test_a_second_model_from_the_same_config_object_is_pruned_too(tiny_roberta_dir):
    """Pruning one model must not make another built from the same config object look pruned."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    config = RobertaConfig.from_pretrained(tiny_roberta_dir)
    first = RobertaForMaskedLM(config)
    headprune.prune_heads(first, PRUNED)
    second = RobertaForMaskedLM(config)
    complete = count_parameters(second)
    headprune.prune_heads(second, PRUNED)
    assert count_parameters(second) == count_parameters(first) < complete
    assert kept_heads(second) == kept_heads(first) == KEPT
    # A model whose modules disagree with the heads its config records is refused, not left as it is.
    third = RobertaForMaskedLM(first.config)
    with pytest.raises(HeadpruneError, match=r"layers hold \[4, 4\] heads but its config records \[1, 3\]"):
        headprune.prune_heads(third, [(0, 1)])


def test_a_finetuned_classifier_loads_the_same_way(exports, tmp_path):
    """`headprune finetune`'s directory (a save_pruned classifier) loads with AutoModelForSequenceClassification."""
    from transformers import AutoModelForSequenceClassification

    from headprune.classify import Classifier, build_classifier, load_classifier, save_classifier

    mlm, tokenizer = load_pruned(exports["bert"][1])
    model = build_classifier(mlm, ["neg", "pos"]).eval()
    out = save_classifier(Classifier(model=model, tokenizer=tokenizer, labels=["neg", "pos"]), tmp_path / "clf",
                          base="tiny")
    loaded, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    batch = tokenizer(TWEETS, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**batch).logits, model(**batch).logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(load_classifier(out).model(**batch).logits, model(**batch).logits, rtol=0, atol=0)
    assert loaded.config.id2label == {0: "neg", 1: "pos"}


def test_model_card_shows_three_ways_to_load_that_run(exports, tmp_path):
    """The card's plain-transformers block runs without headprune, its headprune block with it."""
    out = exports["roberta"][1]
    card = (out / "README.md").read_text()
    blocks = [b.split("\n", 1)[1] for b in card.split("```")[1::2] if b.startswith("python")]
    plain, registered = blocks[0], blocks[1]
    assert "trust_remote_code=True" in plain and "trust_remote_code" not in registered.split("#")[0]
    assert "### ONNX" in card and f"headprune export {out} --format onnx --out {out}-onnx" in card
    assert f"`trust_remote_code=True` lets transformers import `{MODELING_FILE}`" in card
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    for code, prelude, extra in ((plain, "import sys; sys.modules['headprune'] = None\n", {}),
                                 (registered, "", {"PYTHONPATH": os.environ.get("PYTHONPATH", "")})):
        done = subprocess.run([sys.executable, "-c", prelude + code + "\nprint('ran')"], capture_output=True,
                              text=True, timeout=600, env={**env, **extra}, check=False)
        assert done.stdout.strip().endswith("ran"), done.stderr[-2000:]
