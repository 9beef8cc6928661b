"""Shared fixtures: tiny random BERT and RoBERTa masked-LM models saved offline, small datasets, and
the tiny run of the whole method (`tiny_run`, per test module).

Everything here is built in the test session (no network): the tiny BERT re-uses the embedded
MiniLM WordPiece tokenizer, the tiny RoBERTa gets a byte-level BPE trained on person.csv."""

from __future__ import annotations

import os

# Before anything imports transformers / huggingface_hub: never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from headprune.data import resolve_data_dir
from headprune.models import resolve_model_path

torch.manual_seed(0)

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 130,
}
ROBERTA_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def air_data_dir() -> Path:
    """The air-datasets folder (found by `resolve_data_dir`, never copied)."""
    return resolve_data_dir().resolve()


@pytest.fixture(scope="session")
def person_frame(air_data_dir: Path) -> pd.DataFrame:
    """person.csv, raw (columns `tweet`, `class`)."""
    return pd.read_csv(air_data_dir / "person.csv", dtype=str, keep_default_na=False)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a tiny random BertForMaskedLM (32 hidden, 3 layers x 4 heads) + MiniLM tokenizer
    (tokenizer.json, tokenizer_config.json and the original vocab.txt)."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    directory = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **TINY)
    BertForMaskedLM(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    # Like a real checkpoint: transformers 5.x saves only tokenizer.json, keep the WordPiece vocab too.
    shutil.copyfile(Path(resolve_model_path("minilm")) / "vocab.txt", directory / "vocab.txt")
    return directory


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory: pytest.TempPathFactory, person_frame: pd.DataFrame) -> Path:
    """A directory with a tiny random RobertaForMaskedLM + a ~500-token byte-level BPE trained on person.csv."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-roberta")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        person_frame["tweet"].tolist(),
        vocab_size=500,
        min_frequency=2,
        special_tokens=ROBERTA_SPECIAL_TOKENS,
        show_progress=False,
    )
    tokenizer = _roberta_tokenizer(bpe, directory, RobertaTokenizerFast)
    assert tokenizer.convert_tokens_to_ids(ROBERTA_SPECIAL_TOKENS) == [0, 1, 2, 3, 4]
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        **TINY,
    )
    RobertaForMaskedLM(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _roberta_tokenizer(bpe, directory: Path, cls):
    """Wrap a trained byte-level BPE as a RoBERTa tokenizer (transformers 5.x takes the vocab and
    merges themselves; 4.x takes their files)."""
    import inspect

    if "vocab" in inspect.signature(cls.__init__).parameters:
        model = json.loads(bpe.to_str())["model"]
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
        return cls(vocab=model["vocab"], merges=merges, model_max_length=128)
    bpe.save_model(str(directory))  # pragma: no cover - transformers 4.x
    return cls(
        vocab_file=str(directory / "vocab.json"),
        merges_file=str(directory / "merges.txt"),
        model_max_length=128,
    )


@pytest.fixture(params=["bert", "roberta"])
def tiny_model_dir(request: pytest.FixtureRequest) -> Path:
    """Each tiny family in turn (parametrized over `tiny_bert_dir` and `tiny_roberta_dir`)."""
    return request.getfixturevalue(f"tiny_{request.param}_dir")


@pytest.fixture
def make_dataset_csv(tmp_path: Path, person_frame: pd.DataFrame) -> Callable[..., Path]:
    """Factory: write a two-class CSV from person.csv (the first `per_class` positive, then negative rows).

    `make_dataset_csv(per_class=30, name="small.csv", text_column="tweet", label_column="class")`
    -> the path of the file, under `tmp_path`."""

    def make(
        per_class: int = 30, name: str = "small.csv", text_column: str = "tweet", label_column: str = "class"
    ) -> Path:
        frames = [person_frame[person_frame["class"] == c].head(per_class) for c in ("positive", "negative")]
        frame = pd.concat(frames).rename(columns={"tweet": text_column, "class": label_column})
        path = tmp_path / name
        frame.to_csv(path, index=False)
        return path

    return make


@pytest.fixture
def small_dataset_csv(make_dataset_csv: Callable[..., Path]) -> Path:
    """Path of a 60-row two-class CSV (`tweet,class`: 30 positive, 30 negative tweets of person.csv)."""
    return make_dataset_csv()


@pytest.fixture
def sample_texts() -> list[str]:
    """A few preprocessed tweets of different lengths (for a padded batch)."""
    return [
        "someuser big fan of natalie portman since closer",
        "colin firth better win the oscar. ffffffffascinating!",
        "i hate mondays someurl",
    ]


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: on a shared, busy 2-core machine two threads spin against
    each other (a tiny-model score takes ~7 s instead of ~0.3 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, air_data_dir: Path):
    """`headprune run` of `_tiny.tiny_config` (every stage, seconds): (root, {name: csv}, summary dict);
    the run directory is root / "run". Per module, so that no module sees another's changes to it."""
    from _tiny import tiny_config, tiny_csvs
    from headprune.config import from_dict
    from headprune.pipeline import Pipeline
    from headprune.progress import RunProgress

    root = tmp_path_factory.mktemp("pipeline")
    csvs = tiny_csvs(root, air_data_dir)
    config = from_dict(tiny_config(tiny_bert_dir, csvs), source="tiny.toml")
    summary = Pipeline(config, root / "run", progress=RunProgress(enabled=False)).run()
    return root, csvs, summary
