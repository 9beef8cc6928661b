"""Step 1 (METHOD.md, Algorithms 1 and 2): the importance bookkeeping on hand-made gradients, the
ranking direction, seeded random orders, the order file, and `importance_order` on the tiny BERT."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import headprune.importance.gradient as importance_module
from _executors import Counting
from headprune.base import load_base
from headprune.data import load_dataset
from headprune.errors import HeadpruneError
from headprune.importance import (
    GradientImportance,
    ImportanceSettings,
    Order,
    Step1Run,
    importance_order,
    random_order,
    rank_heads,
)
from headprune.importance.gradient import ImportanceAccumulator, min_max
from headprune.store import ResultStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def assert_close(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual, t(expected), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- Algorithm 2's normalisation


def test_min_max_scales_to_unit_interval_and_constant_gives_zeros() -> None:
    assert_close(min_max(t([[2.0, 4.0], [6.0, 3.0]])), [[0.0, 0.5], [1.0, 0.25]])
    assert_close(min_max(t([[0.7, 0.7], [0.7, 0.7]])), [[0.0, 0.0], [0.0, 0.0]])


def test_accumulator_worked_example_over_two_epochs() -> None:
    acc = ImportanceAccumulator((2, 2), n_tokens=10)
    assert_close(acc.importance, [[0, 0], [0, 0]])

    # Epoch 1, batch 1: |g| = [[1, 2], [3, 0]] -> min 0, max 3.
    acc.add_batch(torch.tensor([[1.0, -2.0], [3.0, 0.0]]))
    assert_close(acc.importance, [[1 / 3, 2 / 3], [1.0, 0.0]])
    # Batch 2: + |g| = [[0, 1], [1, 2]] -> [[1/3, 5/3], [2, 2]]; min 1/3, max 2, range 5/3.
    acc.add_batch(torch.tensor([[0.0, 1.0], [-1.0, 2.0]]))
    assert_close(acc.importance, [[0.0, 0.8], [1.0, 1.0]])
    # End of epoch 1: / 10 -> [[0, .08], [.1, .1]] -> min-max -> [[0, .8], [1, 1]]; a copy is kept.
    acc.end_epoch()
    assert_close(acc.importance, [[0.0, 0.8], [1.0, 1.0]])
    assert len(acc.epochs) == 1

    # Epoch 2 starts from the carried-over importance: + [[2, 0], [0, 0]] -> [[2, .8], [1, 1]];
    # min .8, max 2, range 1.2 -> [[1, 0], [1/6, 1/6]]. (Without carry-over it would be [[1, 0], [0, 0]].)
    acc.add_batch(torch.tensor([[-2.0, 0.0], [0.0, 0.0]]))
    assert_close(acc.importance, [[1.0, 0.0], [1 / 6, 1 / 6]])
    acc.end_epoch()
    assert len(acc.epochs) == 2
    assert_close(acc.epochs[1], [[1.0, 0.0], [1 / 6, 1 / 6]])
    # The first epoch's copy is not changed by what came after.
    assert_close(acc.epochs[0], [[0.0, 0.8], [1.0, 1.0]])
    assert acc.epochs[0] is not acc.importance


def test_accumulator_divides_by_n_tokens_before_min_max() -> None:
    """A matrix that is not already in [0, 1] at the end of an epoch: the division and the min-max
    both happen (the result equals min-max of importance / n_tokens)."""
    acc = ImportanceAccumulator((1, 3), n_tokens=4)
    acc.importance = t([[2.0, 6.0, 10.0]])  # as if set by earlier batches
    acc.end_epoch()  # / 4 -> [.5, 1.5, 2.5] -> min-max -> [0, .5, 1]
    assert_close(acc.epochs[0], [[0.0, 0.5, 1.0]])


def test_accumulator_constant_gradients_give_zeros() -> None:
    acc = ImportanceAccumulator((2, 3), n_tokens=7)
    acc.add_batch(torch.full((2, 3), 0.25))
    assert_close(acc.importance, [[0, 0, 0], [0, 0, 0]])
    acc.add_batch(torch.full((2, 3), -3.0))  # |g| constant again: still nothing distinguishes the heads
    acc.end_epoch()
    assert_close(acc.epochs[0], [[0, 0, 0], [0, 0, 0]])
    assert acc.importance.dtype == torch.float64


def test_the_first_batch_outweighs_the_later_ones_as_algorithm_2_is_written() -> None:
    """Algorithm 2, faithful to the text: the first batch's min-max sets the [0, 1] scale, and each
    later batch, whose raw |g| is about 1e-3 (the stored raw statistics' scale), moves the running
    importance by about its own size. So 37 later batches with another pattern, together 37 times
    the first batch's weight in a plain sum, barely move the first batch's order; the per-epoch
    division by the tokens, then min-max, changes nothing."""
    from scipy import stats

    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(b"algorithm 2: the first batch").digest()[:8], "little"))
    g1 = 1e-3 * rng.random((6, 12))
    pattern = rng.random((6, 12))  # what every later batch shows, unrelated to g1
    later = [1e-3 * (pattern + 0.2 * rng.random((6, 12))) for _ in range(37)]
    acc = ImportanceAccumulator((6, 12), n_tokens=5000)
    for grad in [g1, *later]:
        acc.add_batch(torch.from_numpy(grad))
    before = acc.importance.clone()
    acc.end_epoch()
    final = acc.epochs[0].numpy().ravel()
    summed = (g1 + sum(later)).ravel()

    def rho(a: np.ndarray, b: np.ndarray) -> float:
        return float(stats.spearmanr(a, b)[0])

    assert rho(final, g1.ravel()) > 0.99  # the first batch's order
    assert rho(summed, pattern.ravel()) > 0.95 and rho(final, summed) < 0.5  # not the summed gradient's
    torch.testing.assert_close(acc.epochs[0], before, rtol=0, atol=1e-12)  # the epoch's step: a no-op


# ----------------------------------------------------------------------------- ranking and Order


def test_rank_heads_most_important_first_and_least_important_pruned_first() -> None:
    matrix = np.array([[0.1, 0.9], [0.5, 0.2]])
    ranked = rank_heads(matrix)
    assert ranked == [(0, 1), (1, 0), (1, 1), (0, 0)]
    order = Order(name="OI", ranked=ranked, n_layers=2, n_heads=2, matrix=matrix.tolist())
    assert order.least_important(0) == []
    assert order.least_important(1) == [(0, 0)]  # the LOWEST importance goes first
    assert order.least_important(2) == [(0, 0), (1, 1)]
    assert order.least_important(3) == [(0, 0), (1, 0), (1, 1)]
    np.testing.assert_array_equal(order.ranks(), [[3, 0], [1, 2]])


def test_rank_heads_ties_keep_layer_head_order() -> None:
    assert rank_heads(np.array([[0.5, 0.5], [0.5, 0.7]])) == [(1, 1), (0, 0), (0, 1), (1, 0)]
    assert rank_heads(np.zeros((2, 3))) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    # Ties at the bottom: the later (layer, head) is the less important one, so it is pruned first.
    order = Order(name="x", ranked=rank_heads(np.array([[1.0, 0.0, 0.0]])), n_layers=1, n_heads=3)
    assert order.least_important(1) == [(0, 2)]


def test_random_order_is_a_seeded_permutation() -> None:
    a = random_order(3, 4, seed=1)
    assert a.ranked == random_order(3, 4, seed=1).ranked
    assert sorted(a.ranked) == [(l, h) for l in range(3) for h in range(4)]
    assert len(set(a.ranked)) == 12
    others = [random_order(3, 4, seed=s).ranked for s in (2, 3)]
    assert a.ranked != others[0] and a.ranked != others[1] and others[0] != others[1]
    assert a.kind == "random" and a.seeds == [1] and a.matrix is None


def test_order_json_round_trip(tmp_path: Path) -> None:
    order = Order(name="OI", ranked=rank_heads(np.array([[0.1, 0.9], [0.5, 0.2]])), n_layers=2, n_heads=2,
                  matrix=[[0.1, 0.9], [0.5, 0.2]], model="tiny", model_fingerprint="abc",
                  datasets=["irony"], seeds=[1, 2], dataset_hashes={"irony": "0123456789abcdef"})
    path = order.save(tmp_path / "sub" / "order.json")
    loaded = Order.load(path)
    assert loaded == order
    assert isinstance(loaded.ranked[0], tuple)
    rnd = random_order(2, 3, seed=5, name="A5")
    assert Order.load(rnd.save(tmp_path / "a5.json")) == rnd


def test_order_load_errors(tmp_path: Path) -> None:
    with pytest.raises(HeadpruneError, match="file not found"):
        Order.load(tmp_path / "missing.json")
    for i, text in enumerate(["not json at all", json.dumps({"hello": 1}), json.dumps([1, 2])]):
        path = tmp_path / f"bad{i}.json"
        path.write_text(text)
        with pytest.raises(HeadpruneError, match="not a headprune order file"):
            Order.load(path)
    data = random_order(2, 2, seed=1).to_json()
    for i, ranked in enumerate([data["ranked"][:-1], data["ranked"][:-1] + data["ranked"][:1]]):
        path = tmp_path / f"incomplete{i}.json"
        path.write_text(json.dumps({**data, "ranked": ranked}))
        with pytest.raises(HeadpruneError, match="every"):
            Order.load(path)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"name": "OI",\n "ranked": [[0, 0],, ]}', "not valid JSON (line 2, column 20: Expecting value)"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"name": "OI", "ranked": [], "n_layers": 1}', "no 'n_heads'"),
        ('{"name": "OI", "ranked": [[0, 0]], "n_layers": "1", "n_heads": 1}',
         "'n_layers' must be a positive integer, got '1'"),
        ('{"name": "OI", "ranked": [[0, "a"]], "n_layers": 1, "n_heads": 1}',
         '\'ranked[0]\' must be a pair [layer, head] of integers from 0, got [0, "a"]'),
        ('{"name": "OI", "ranked": [[0]], "n_layers": 1, "n_heads": 1}',
         "'ranked[0]' must be a pair [layer, head] of integers from 0, got [0]"),
        ('{"name": "OI", "ranked": [[0, 0]], "n_layers": 1, "n_heads": 1, "seeds": "1-3"}',
         "'seeds' must be a list of integers, got \"1-3\""),
    ],
    ids=["bad-json", "a-list", "missing-key", "string-count", "string-head", "short-pair", "seeds-string"],
)
def test_order_file_of_another_shape_names_the_key(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "order.json"
    path.write_text(content)
    with pytest.raises(HeadpruneError) as err:
        Order.load(path)
    shape = f"--order {path}: not a headprune order file ({problem})"  # what it holds is of another shape
    syntax = f"--order {path}: not a headprune order file: {problem}"  # it is not JSON at all
    assert str(err.value) == (syntax if problem.startswith("not valid JSON") else shape)


def test_order_file_that_is_a_directory_or_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(HeadpruneError) as err:
        Order.load(tmp_path / "dir.json")
    assert str(err.value) == f"--order {tmp_path / 'dir.json'}: is a directory, not an order file"
    (tmp_path / "latin.json").write_bytes(b'{"name": "caf\xe9"}')
    with pytest.raises(HeadpruneError, match="not UTF-8 text"):
        Order.load(tmp_path / "latin.json")


# ----------------------------------------------------------------------------- importance_order on the tiny BERT


def test_importance_order_tiny_bert(tiny_bert_dir: Path, small_dataset_csv: Path, tmp_path: Path) -> None:
    base = load_base(str(tiny_bert_dir), warmup=None)
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    dataset = load_dataset(small_dataset_csv)
    settings = ImportanceSettings(epochs=1)

    first = importance_order(base, [dataset], [1], settings)
    matrix = np.array(first.matrix)
    assert matrix.shape == (3, 4) == (base.n_layers, base.n_heads)
    assert np.all(np.isfinite(matrix)) and matrix.min() >= 0.0 and matrix.max() <= 1.0
    # One dataset, one seed, one epoch: the order is that single min-max matrix.
    assert matrix.min() == 0.0 and matrix.max() == 1.0
    assert first.ranked == rank_heads(matrix)
    assert sorted(first.ranked) == [(l, h) for l in range(3) for h in range(4)]
    assert first.kind == "importance" and first.model_fingerprint == base.fingerprint
    assert first.datasets == ["small"] and first.seeds == [1]
    assert first.dataset_hashes == {"small": dataset.content_hash}  # what `headprune verify` selects rows by
    # The base model is not changed by Step 1.
    assert all(torch.equal(before[k], v) for k, v in base.model.state_dict().items())

    # importance_order is GradientImportance through the store; here with an executor that counts.
    store = ResultStore(tmp_path / "store.sqlite")
    events: list[tuple[str, int, bool]] = []
    counting = Counting()
    run = Step1Run(store=store, executor=counting,
                   on_result=lambda name, seed, cached: events.append((name, seed, cached)))
    second = GradientImportance([dataset], [1], settings).order(base, run)
    assert len(counting.tasks) == 1
    assert second.matrix == first.matrix and second.ranked == first.ranked  # deterministic
    third = GradientImportance([dataset], [1], settings).order(base, run)
    assert len(counting.tasks) == 1  # nothing recomputed: it came from the store
    assert third.matrix == first.matrix and third.ranked == first.ranked
    assert events == [("small", 1, False), ("small", 1, True)]
    # Other settings are another key: computed again.
    GradientImportance([dataset], [1], ImportanceSettings(epochs=1, batch_size=32)).order(base, run)
    assert len(counting.tasks) == 2
    store.close()


def test_importance_order_in_worker_processes_equals_in_process(tiny_bert_dir: Path, small_dataset_csv: Path,
                                                                tmp_path: Path, one_torch_thread) -> None:
    """`workers=2`: the finetunings run in two processes that build the base themselves; every
    matrix is what this process computes, each is stored once, and a stored one is not sent."""
    import functools

    base = load_base(str(tiny_bert_dir), warmup=None)
    dataset = load_dataset(small_dataset_csv)
    settings = ImportanceSettings(epochs=1)
    here = importance_order(base, [dataset], [1, 2, 3], settings)
    store = ResultStore(tmp_path / "store.sqlite")
    importance_order(base, [dataset], [2], settings, store=store)  # one of them already stored
    events: list[tuple[str, int, bool]] = []
    loader = functools.partial(load_base, str(tiny_bert_dir), None)
    there = importance_order(base, [dataset], [1, 2, 3], settings, store=store, workers=2, loader=loader,
                             on_result=lambda name, seed, cached: events.append((name, seed, cached)))
    np.testing.assert_allclose(np.array(there.matrix), np.array(here.matrix), atol=1e-9)
    assert there.ranked == here.ranked
    assert sorted(events) == [("small", 1, False), ("small", 2, True), ("small", 3, False)]
    with store._conn as db:  # each finetuning once: its OI row and its statistics row
        rows = db.execute("SELECT settings FROM importance").fetchall()
    assert len(rows) == 6 and sum('"statistics"' in settings for (settings,) in rows) == 3
    store.close()


# ----------------------------------------------------------------------------- Step 1 starts from the checkpoint


@pytest.fixture(scope="module")
def tiny_encoder_with_pooler_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    """A bare BertModel checkpoint with a trained-looking pooler and no MLM head (the shape of the
    embedded MiniLM: `pooler.dense.*` in the file, no `cls.*`)."""
    import shutil

    from transformers import BertConfig, BertModel

    directory = tmp_path_factory.mktemp("tiny-encoder-pooler")
    config = BertConfig.from_pretrained(tiny_bert_dir)
    torch.manual_seed(3)
    encoder = BertModel(config, add_pooling_layer=True)
    with torch.no_grad():
        encoder.pooler.dense.weight.normal_(0.0, 1.0)  # unlike any fresh initialisation
        encoder.pooler.dense.bias.uniform_(-1.0, 1.0)
    encoder.save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copyfile(tiny_bert_dir / name, directory / name)
    return directory


def test_step1_model_takes_every_weight_but_the_classifier_from_the_checkpoint(
        tiny_encoder_with_pooler_dir: Path) -> None:
    """METHOD.md: only the classification head is fresh. BertForMaskedLM has no pooler, so the
    checkpoint's pooler must be carried to the classification model (it once stayed random)."""
    from safetensors.torch import load_file

    checkpoint = load_file(str(tiny_encoder_with_pooler_dir / "model.safetensors"))
    assert any(k.startswith("pooler.") for k in checkpoint)
    base = load_base(str(tiny_encoder_with_pooler_dir), warmup=None)
    torch.manual_seed(1)
    model = importance_module.classification_model(base, n_labels=2)
    state = model.state_dict()
    compared = 0
    for name, tensor in state.items():
        if name.startswith("classifier.") or name.endswith("position_ids"):
            continue
        inner = name.removeprefix(f"{model.base_model_prefix}.")
        assert inner in checkpoint, name
        torch.testing.assert_close(tensor, checkpoint[inner], rtol=0, atol=0, msg=name)
        compared += 1
    assert compared == len([k for k in checkpoint if not k.endswith("position_ids")])
    assert {k for k in state if k.startswith("classifier.")} == {"classifier.weight", "classifier.bias"}


def test_step1_rows_of_a_random_pooler_are_never_reused(tiny_encoder_with_pooler_dir: Path, tiny_bert_dir: Path,
                                                        small_dataset_csv: Path, tmp_path: Path) -> None:
    """The pooler's origin is part of every BERT-family Step 1 key: a row stored under the old key
    (the four finetuning settings alone, when the pooler was random) is not found, and the order
    records the keyed settings (which `headprune verify` selects rows by)."""
    base = load_base(str(tiny_encoder_with_pooler_dir), warmup=None)
    settings = ImportanceSettings(epochs=1)
    keyed = importance_module.step1_key_settings(base, settings)
    assert keyed["pooler"].startswith("pretrained:") and keyed != settings.as_dict()
    dataset = load_dataset(small_dataset_csv)
    store = ResultStore(tmp_path / "store.sqlite")
    old = store.importance_key(base.fingerprint, dataset.content_hash, 1, settings.as_dict())
    fake = [[[0.5] * base.n_heads for _ in range(base.n_layers)]]
    store.put_importance(old, model=base.fingerprint, dataset=dataset.name, dataset_hash=dataset.content_hash,
                         seed=1, settings=settings.as_dict(), matrices=fake, device="cpu")
    order = importance_order(base, [dataset], [1], settings, store=store)
    assert order.matrix != fake[0]  # computed, not the old row
    assert order.settings == keyed and Order.from_json(order.to_json()).settings == keyed
    # A checkpoint without a pooler trains a fresh one, and says so in the key.
    bare = load_base(str(tiny_bert_dir), warmup=None)
    assert importance_module.step1_key_settings(bare, settings)["pooler"] == "fresh"
    store.close()


def test_roberta_step1_keys_are_unchanged(tiny_roberta_dir: Path) -> None:
    """RoBERTa's classification model has no pooler: its Step 1 keys are the finetuning settings alone."""
    base = load_base(str(tiny_roberta_dir), warmup=None)
    settings = ImportanceSettings(epochs=1)
    assert importance_module.step1_key_settings(base, settings) == settings.as_dict()
