"""The batched engine (headprune.engine) against the reference loop (headprune.scoring), on CPU.

Tiny random masked-LM models (hidden 32, 2 layers x 4 heads) with the embedded MiniLM tokenizer,
a few dozen tweets of person.csv. With dropout disabled the engine must train exactly what the
reference trains (weights equal up to float rounding); with dropout the streams differ by design.

Whole scores (F1) are compared on data where the features decide them (`decided`: two classes of
disjoint vocabularies, models whose heads matter): on tweets and a tiny model at BERT's initial
scale the F1 does not depend on the features at all, so equal F1s would prove nothing. There the
SVM's inputs themselves (features and labels of every model) are compared too (`svm_inputs`)."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from headprune.engine import BatchedExecutor, EngineOptions, StackedMLM, adjust_stacked, supports
from headprune.engine.batches import job_batches
from headprune.engine.packing import finetune_steps, plan_packs
from headprune.engine.stages import (
    EngineStages,
    SizeCache,
    features_stacked,
    score_pack,
    score_seeds_batched,
    svm_score,
)
from headprune.families import FAMILIES
from headprune.models import resolve_model_path
from headprune.scoring import Stages, adjust, encode, features, score_seed, svm_f1
from headprune.settings import ScoreSettings
from headprune.surgery import prune_heads
from headprune.tasks import EvalContext, SeedTask

CPU = torch.device("cpu")
PRUNED = ((0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3))  # layer 0 keeps 2 heads, layer 1 goes


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path("minilm"))


@pytest.fixture(scope="module")
def tweets(person_frame):
    """70 tweets of person.csv (35 per class) and their labels."""
    frames = [person_frame[person_frame["class"] == c].head(35) for c in ("positive", "negative")]
    texts = [t for f in frames for t in f["tweet"].str.lower().tolist()]
    labels = np.array([0] * 35 + [1] * 35)
    return texts, labels


@pytest.fixture(scope="module")
def encoded(tokenizer, tweets):
    return encode(tokenizer, tweets[0], 64), tweets[1]


@pytest.fixture(scope="module")
def decided(tokenizer):
    """120 texts (ids, labels; classes alternate, so any prefix is balanced) whose two classes use
    disjoint vocabularies of 20 words each, 2 to 15 words a text: features separate the classes,
    so the F1 is high, and a features bug (other layers, padding averaged in, another model's rows)
    moves it. On the tweets of `encoded` a tiny random model's F1 is near chance and the same for
    the complete model and for PRUNED: no F1 comparison there can catch a features bug."""
    rng = np.random.default_rng(0)
    words = sorted(w for w in tokenizer.get_vocab() if w.isascii() and w.isalpha() and len(w) > 3)
    pools = rng.choice(words, size=(2, 20), replace=False)
    labels = np.arange(120) % 2
    texts = [" ".join(rng.choice(pools[c], size=int(rng.integers(2, 16)))) for c in labels]
    return encode(tokenizer, texts, 64), labels


# Initial weight scale of the models the whole scores are compared on: at BERT's 0.02 a tiny random
# model's attention adds about 1% to the residual stream, so pruning 6 of its 8 heads leaves every
# prediction as it was; at 0.2 the heads shape the features (and the F1).
LIVELY = 0.2


def tiny_model(tokenizer, family: str = "bert", dropout: bool = False, seed: int = 0, layers: int = 2,
               initializer_range: float = 0.02):
    from transformers import BertConfig, BertForMaskedLM, RobertaConfig, RobertaForMaskedLM

    shape = {"hidden_size": 32, "num_hidden_layers": layers, "num_attention_heads": 4, "intermediate_size": 64,
             "max_position_embeddings": 130, "initializer_range": initializer_range}
    if not dropout:
        shape.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    if family == "bert":
        model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **shape))
    else:  # the BERTweet-shape set-up of the benchmark: RoBERTa positions, pad id 1, MiniLM token ids
        model = RobertaForMaskedLM(RobertaConfig(vocab_size=len(tokenizer), type_vocab_size=1, **shape))
    return model.eval()


def tiny_base(model_dir):
    """A tiny random BERT saved with MiniLM's tokenizer and loaded as a BaseModel (no warm-up)."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from headprune.base import load_base

    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=130)).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(resolve_model_path("minilm")).save_pretrained(model_dir)
    return load_base(str(model_dir), warmup=None)


def reference_weights(model, tokenizer, rows, settings, seed) -> dict[str, torch.Tensor]:
    model = copy.deepcopy(model)
    adjust(model, tokenizer, rows, settings, seed, CPU)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_same_weights(got: dict, expected: dict, what: str) -> None:
    """Equal up to rounding (both run torch's fused AdamW kernel; the matmuls differ in layout and
    summation order: the engine stores linear weights transposed): Adam divides by sqrt(v) + eps, so
    an element whose gradient is ~0 can turn a 1e-9 rounding difference into a larger one; allow
    1e-4 anywhere (seen: 9e-6), and 1e-6 for all but 0.1% of the elements (seen: 0.04%). A wrong
    batch, mask, learning rate or skipped step moves far more elements by far more."""
    worst = max((got[n] - expected[n]).abs().max().item() for n in got)
    off = sum(int(((got[n] - expected[n]).abs() > 1e-6).sum()) for n in got)
    total = sum(t.numel() for t in got.values())
    assert worst < 1e-4, f"{what}: max |engine - reference| = {worst}"
    assert off <= total * 1e-3, f"{what}: {off} of {total} elements differ by more than 1e-6"


class SvmInputs:
    """What each SVM is handed: the reference's (`scoring.svm_f1` inside `score_seed`) in call
    order, the engine's (`stages.svm_score`, the groups', packs' and executor's one way in) by
    (pruned set, seed, rows)."""

    def __init__(self) -> None:
        self.reference: list[tuple[np.ndarray, np.ndarray]] = []
        self.engine: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        # Injected: `score_seed(..., stages=inputs.stages)`, `BatchedExecutor(..., inputs.engine_stages)`.
        self.stages = Stages(classify=self._svm_f1)
        self.engine_stages = EngineStages(svm=self._svm_score)

    def _svm_f1(self, x, y, *args):
        self.reference.append((np.array(x), np.array(y)))
        return svm_f1(x, y, *args)

    def _svm_score(self, trained, k, *args):
        key = (tuple(sorted(trained.pruned[k])), trained.seeds[k], len(trained.labels[k]))
        self.engine[key] = (trained.features[k].copy(), np.array(trained.labels[k]))
        return svm_score(trained, k, *args)

    def last_reference(self) -> tuple[np.ndarray, np.ndarray]:
        ((x, y),) = self.reference
        self.reference.clear()
        return x, y

    def assert_engine_equals(self, pruned, seed: int, expected: tuple[np.ndarray, np.ndarray]) -> None:
        """The engine's features of (pruned set, seed) equal `expected`'s, to float rounding (the
        trained weights differ by up to 1e-4, see `assert_same_weights`), and its labels exactly."""
        x, y = expected
        got_x, got_y = self.engine[(tuple(sorted(pruned)), seed, len(y))]
        np.testing.assert_array_equal(got_y, y)
        assert got_x.shape == x.shape
        np.testing.assert_allclose(got_x, x, rtol=0, atol=1e-4)  # seen: 2e-6; a features bug: 1e-2 and more


@pytest.fixture
def svm_inputs() -> SvmInputs:
    return SvmInputs()


# ----------------------------------------------------------------------------- SVM


def test_svm_on_model_features_equals_libsvm(tokenizer, decided):
    """The SVM stage (`scoring.svm_f1`, the engine's and the reference's) on a model's features:
    libsvm's own RBF kernel gives the same F1."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.svm import SVC

    ids, labels = decided
    model = tiny_model(tokenizer, initializer_range=LIVELY)
    x = features(model, ids, tokenizer.pad_token_id, ScoreSettings(), CPU)
    for seed in (1, 7):
        expected = cross_val_score(SVC(class_weight="balanced"), x, labels, scoring="f1_macro",
                                   cv=StratifiedKFold(10, shuffle=True, random_state=seed)).mean()
        assert svm_f1(x, labels, 10, seed, CPU) == pytest.approx(expected, abs=1e-9)


# ----------------------------------------------------------------------------- training parity


@pytest.mark.parametrize("family,pruned,epochs", [("bert", (), 2), ("bert", PRUNED, 1), ("roberta", (), 1)])
def test_stacked_training_equals_reference_without_dropout(tokenizer, encoded, family, pruned, epochs):
    """Three seeds trained together, each on a different number of rows (different step counts, so
    models finish at different ticks), with rare masking (batches with no masked token get skipped):
    every model's weights equal the reference loop's."""
    ids, _ = encoded
    model = tiny_model(tokenizer, family)
    if pruned:
        prune_heads(model, list(pruned))
    settings = ScoreSettings(epochs=epochs, batch_size=2, learning_rate=1e-3, mlm_probability=0.03)
    jobs = [(ids[:12], 1), (ids[10:30], 2), (ids[30:37], 3)]
    skipped = [[b is None for b in job_batches(tokenizer, rows, seed, settings)] for rows, seed in jobs]
    assert [len(s) for s in skipped] == [6 * epochs, 10 * epochs, 4 * epochs]
    assert all(any(s) for s in skipped)  # every job skips a batch (no masked token), on different ticks
    stack = StackedMLM.replicate(model, len(jobs))
    stats: dict = {}
    seconds = adjust_stacked(stack, tokenizer, jobs, settings, stats=stats)
    assert seconds > 0 and 0 < stats["steps"] <= 10 * epochs
    start = dict(model.named_parameters())
    for i, (rows, seed) in enumerate(jobs):
        expected = reference_weights(model, tokenizer, rows, settings, seed)
        got = stack.state_of(i)
        assert set(got) == set(expected)
        moved = max((expected[n] - start[n].detach()).abs().max().item() for n in got)
        assert moved > 1e-3  # the models did train
        assert_same_weights(got, expected, f"model {i}")


@pytest.mark.parametrize("masked", [False, True])
def test_training_a_stack_of_one_model_leaves_the_model_as_it_was(tokenizer, encoded, masked):
    """A stack of one model holds copies of its parameters: the model it was built from (the base
    model, for a pack of one task) is not trained along with it. Once, the one-model stack's
    embeddings, biases and norms were the source model's own tensors, and every later pack started
    from the weights a one-task pack had trained."""
    ids, _ = encoded
    model = tiny_model(tokenizer, layers=3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stack = StackedMLM.masked(model, [MIXED[1]]) if masked else StackedMLM.replicate(model, 1)
    adjust_stacked(stack, tokenizer, [(ids[:16], 1)], ScoreSettings(epochs=1, batch_size=8, learning_rate=1e-3))
    assert max((stack.state_of(0)[n] - before[n]).abs().max().item() for n in before) > 1e-4  # it trained
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), n


def test_stacked_models_with_different_weights(tokenizer, encoded):
    """Models of one shape but different weights (e.g. candidates) stack and train independently."""
    ids, _ = encoded
    models = [tiny_model(tokenizer, seed=s) for s in (0, 1)]
    settings = ScoreSettings(epochs=1, batch_size=8, learning_rate=1e-3)
    jobs = [(ids[:16], 5), (ids[:16], 5)]
    stack = StackedMLM(models, CPU)
    adjust_stacked(stack, tokenizer, jobs, settings)
    for i, model in enumerate(models):
        expected = reference_weights(model, tokenizer, ids[:16], settings, 5)
        assert_same_weights(stack.state_of(i), expected, f"model {i}")


def test_prefetch_thread_gives_the_same_training(tokenizer, encoded):
    """The batches prepared ahead in a background thread (the CUDA default) train the same models."""
    ids, _ = encoded
    model = tiny_model(tokenizer)
    settings = ScoreSettings(epochs=1, batch_size=8, learning_rate=1e-3)
    jobs = [(ids[:24], 1), (ids[24:40], 2)]
    states = []
    for prefetch in (0, 3):
        stack = StackedMLM.replicate(model, 2)
        adjust_stacked(stack, tokenizer, jobs, settings, EngineOptions(prefetch=prefetch))
        states.append([stack.state_of(i) for i in range(2)])
    for plain, ahead in zip(*states):
        assert all(torch.equal(plain[n], ahead[n]) for n in plain)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_features_equal_reference(tokenizer, encoded, family):
    """Features in the flat layout (RoBERTa: position ids from the pad id), models with different
    numbers of rows of different lengths, chunks smaller than a model's rows."""
    ids, _ = encoded
    model = tiny_model(tokenizer, family)
    prune_heads(model, [(0, 0)])
    stack = StackedMLM.replicate(model, 3)
    rows = [ids[:25], ids[20:70], ids[3:4]]
    got = features_stacked(stack, rows, tokenizer.pad_token_id, ScoreSettings(), EngineOptions(feature_batch=16))
    for x, r in zip(got, rows):
        expected = features(model, r, tokenizer.pad_token_id, ScoreSettings(), CPU)
        np.testing.assert_allclose(x, expected, atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_position_ids_follow_the_family_table(tokenizer, encoded, family, monkeypatch):
    """The engine numbers positions as the family's row says (`Family.padded_positions`), not by
    the family's name: with that field flipped, its features no longer equal the reference's."""
    ids, _ = encoded
    model = tiny_model(tokenizer, family)
    rows = [ids[:12]]
    expected = features(model, rows[0], tokenizer.pad_token_id, ScoreSettings(), CPU)
    row = FAMILIES[family]
    monkeypatch.setitem(FAMILIES, family, dataclasses.replace(row, padded_positions=not row.padded_positions))
    got = features_stacked(StackedMLM.replicate(model, 1), rows, tokenizer.pad_token_id, ScoreSettings())
    assert np.abs(got[0] - expected).max() > 1e-2


# ----------------------------------------------------------------------------- whole scores


SCORE_SETTINGS = ScoreSettings(epochs=1, batch_size=16, learning_rate=1e-4, n_folds=5)


def test_the_whole_score_data_is_decided_by_the_features(tokenizer, decided, encoded):
    """What makes the F1 comparisons below worth making: on `decided` the reference F1 is high and
    changes with the model (complete vs PRUNED, per seed); on the tweets of `encoded` with a model
    at BERT's initial scale, it is the same for both (the situation these tests were once in)."""
    lively = tiny_model(tokenizer, initializer_range=LIVELY)
    for seed in (1, 2):
        complete, pruned = (score_seed(lively, tokenizer, *decided, p, seed, SCORE_SETTINGS, CPU).f1
                            for p in ((), PRUNED))
        assert min(complete, pruned) > 0.65 and abs(complete - pruned) > 0.01  # chance: about 0.5
    quiet = tiny_model(tokenizer)
    complete, pruned = (score_seed(quiet, tokenizer, *encoded, p, 1, SCORE_SETTINGS, CPU).f1 for p in ((), PRUNED))
    assert complete == pruned


@pytest.mark.parametrize("pruned", [(), PRUNED])
def test_scores_equal_reference_without_dropout(tokenizer, decided, pruned, svm_inputs):
    ids, labels = decided
    model = tiny_model(tokenizer, initializer_range=LIVELY)
    seeds = [1, 2]
    got = score_seeds_batched(model, tokenizer, ids, labels, pruned, seeds, SCORE_SETTINGS, CPU,
                              stages=svm_inputs.engine_stages)
    for seed, score in zip(seeds, got):
        expected = score_seed(model, tokenizer, ids, labels, pruned, seed, SCORE_SETTINGS, CPU,
                              stages=svm_inputs.stages)
        svm_inputs.assert_engine_equals(pruned, seed, svm_inputs.last_reference())
        assert score.f1 == pytest.approx(expected.f1, abs=1e-3)
        assert (score.n_params, score.size_bytes, score.device) == (expected.n_params, expected.size_bytes, "cpu")
        assert score.adjust_seconds > 0
    assert got[0].adjust_seconds == got[1].adjust_seconds  # the shared wall time


def test_scores_with_dropout_are_valid_and_deterministic(tokenizer, encoded):
    ids, labels = encoded
    model = tiny_model(tokenizer, dropout=True)
    first = score_seeds_batched(model, tokenizer, ids, labels, (), [3, 4], SCORE_SETTINGS, CPU)
    again = score_seeds_batched(model, tokenizer, ids, labels, (), [3, 4], SCORE_SETTINGS, CPU)
    assert [s.f1 for s in first] == [s.f1 for s in again]
    assert all(np.isfinite(s.f1) and 0.0 <= s.f1 <= 1.0 for s in first)


def test_max_models_splits_a_group(tokenizer, decided, svm_inputs):
    ids, labels = decided
    model = tiny_model(tokenizer, initializer_range=LIVELY)
    whole = score_seeds_batched(model, tokenizer, ids, labels, (), [1, 2, 3], SCORE_SETTINGS, CPU,
                                stages=svm_inputs.engine_stages)
    whole_inputs, svm_inputs.engine = svm_inputs.engine, {}
    split = score_seeds_batched(model, tokenizer, ids, labels, (), [1, 2, 3], SCORE_SETTINGS, CPU,
                                EngineOptions(max_models=2, svm_workers=1), stages=svm_inputs.engine_stages)
    assert [s.f1 for s in split] == pytest.approx([s.f1 for s in whole], abs=1e-3)
    assert set(svm_inputs.engine) == set(whole_inputs)
    for (pruned, seed, _), expected in whole_inputs.items():
        svm_inputs.assert_engine_equals(pruned, seed, expected)


# ----------------------------------------------------------------------------- the executor


def test_batched_executor_groups_tasks(tokenizer, decided, svm_inputs):
    ids, labels = decided
    model = tiny_model(tokenizer, initializer_range=LIVELY)
    context = EvalContext(model, tokenizer, {"a": (ids, labels), "b": (ids[:90], labels[:90])}, SCORE_SETTINGS, "cpu")
    tasks = [SeedTask(p, d, s) for p in ((), ((0, 1),)) for d in ("a", "b") for s in (1, 2)]
    results = dict(BatchedExecutor(stages=svm_inputs.engine_stages).run(context, tasks[::-1]))
    assert set(results) == set(tasks)
    executor_inputs, svm_inputs.engine = svm_inputs.engine, {}
    for pruned, dataset in (((), "a"), (((0, 1),), "b")):
        d_ids, d_labels = context.datasets[dataset]
        expected = score_seeds_batched(model, tokenizer, d_ids, d_labels, pruned, [2, 1], SCORE_SETTINGS, CPU,
                                       stages=svm_inputs.engine_stages)
        assert [results[SeedTask(pruned, dataset, s)].f1 for s in (2, 1)] == [e.f1 for e in expected]
        for seed in (2, 1):
            key = (pruned, seed, len(d_labels) // 2)
            np.testing.assert_array_equal(executor_inputs[key][0], svm_inputs.engine[key][0])


def test_supports(tokenizer):
    assert supports(tiny_model(tokenizer)) and supports(tiny_model(tokenizer, "roberta"))


def test_batched_scores_are_stored_apart_from_reference_scores(tmp_path) -> None:
    """Scores of the batched engine never answer a request for the reference loop's, nor the reverse."""
    from headprune.engine import BatchedExecutor
    from headprune.scorer import Scorer
    from headprune.store import ResultStore

    base = tiny_base(tmp_path / "m")
    store = ResultStore(tmp_path / "store.sqlite")
    reference = Scorer(base, store)
    batched = Scorer(base, store, executor=BatchedExecutor())
    task = reference.tasks_for([([], "person")])[0]
    assert reference.key(task) != batched.key(task)


def test_batched_keys_carry_precision_dropout_streams_and_pack_size(tmp_path, tokenizer) -> None:
    """A batched score's key names what decides its numbers beyond the settings: the precision
    actually used, how dropout streams are drawn and which models share them (pack size and step
    ratio); scores differing in any of them are not found for one another. The reference loop's
    keys are the score settings alone, as before."""
    import types

    from headprune.engine import DROPOUT_STREAMS, auto_pack_size
    from headprune.executors import InProcessExecutor
    from headprune.scorer import Scorer
    from headprune.store import ResultStore
    from headprune.tasks import describe_scores

    model = tiny_model(tokenizer)
    assert BatchedExecutor().store_entries(model, CPU) == {"engine": "batched", "precision": "fp32",
                                                           "dropout": DROPOUT_STREAMS}
    packed = BatchedExecutor(EngineOptions(pack=True, pack_models=5)).store_entries(model, "cpu")
    assert packed == {"engine": "batched-packed", "precision": "fp32", "dropout": DROPOUT_STREAMS, "pack_models": 5,
                      "pack_step_ratio": 1.25}
    assert BatchedExecutor(EngineOptions(amp=True)).store_entries(model, CPU)["precision"] == "bf16"
    assert BatchedExecutor(EngineOptions(max_models=3)).store_entries(model, CPU)["max_models"] == 3
    fitting = BatchedExecutor(EngineOptions(pack=True))  # the pack size its packs are planned with
    assert fitting.store_entries(model, CPU)["pack_models"] == auto_pack_size(model, CPU)
    assert fitting.pack_size(model, CPU) == auto_pack_size(model, CPU)
    unsupported = types.SimpleNamespace(config=types.SimpleNamespace(model_type="gpt2", hidden_size=32))
    assert BatchedExecutor(EngineOptions(pack=True)).store_entries(unsupported, CPU) == {}  # the reference loop's

    base = tiny_base(tmp_path / "m")
    store = ResultStore(tmp_path / "store.sqlite")
    reference = Scorer(base, store, device="cpu", executor=InProcessExecutor())
    assert reference.settings_key == {**ScoreSettings().as_dict(), "max_length": min(128, base.max_length)}
    assert reference.describe() == "scores: reference loop"
    task = reference.tasks_for([([], "person")])[0]
    variants = [EngineOptions(), EngineOptions(amp=True), EngineOptions(pack=True, pack_models=4),
                EngineOptions(pack=True, pack_models=8), EngineOptions(pack=True, pack_models=8, pack_step_ratio=2.0)]
    scorers = [Scorer(base, store, device="cpu", executor=BatchedExecutor(o)) for o in variants]
    assert len({reference.key(task), *(s.key(task) for s in scorers)}) == len(variants) + 1
    assert scorers[2].describe() == describe_scores(scorers[2].store_entries) == (
        f"scores: batched engine (fp32, packs of 4, step ratio 1.25, dropout per stack: {DROPOUT_STREAMS}): "
        "equal to the reference loop's statistically")
    assert "bf16, one candidate's seeds per stack" in scorers[1].describe()


# ----------------------------------------------------------------------------- masked stacks and packs

# 3 layers x 4 heads: the complete model, a middle layer removed, the last layer removed plus a head,
# and scattered heads.
MIXED = ((), ((1, 0), (1, 1), (1, 2), (1, 3)), ((0, 3), (2, 0), (2, 1), (2, 2), (2, 3)), ((0, 0), (1, 2), (2, 1)))


def pruned_copy(model, pruned):
    out = copy.deepcopy(model)
    if pruned:
        prune_heads(out, list(pruned))
    return out


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_masked_stack_trains_each_pruned_set_as_surgery(tokenizer, encoded, family):
    """Models of different pruned sets in one masked stack: each trains exactly what the reference
    loop trains on the physically pruned model, and the pruned parts stay as they were."""
    ids, _ = encoded
    model = tiny_model(tokenizer, family, layers=3)
    settings = ScoreSettings(epochs=1, batch_size=4, learning_rate=1e-3)
    jobs = [(ids[:16], 1), (ids[10:30], 2), (ids[30:42], 3), (ids[40:60], 4)]
    stack = StackedMLM.masked(model, MIXED)
    assert stack.kept_layers(0) == [0, 1, 2] and stack.kept_layers(1) == [0, 2] and stack.kept_layers(2) == [0, 1]
    adjust_stacked(stack, tokenizer, jobs, settings)
    start = dict(model.named_parameters())
    for i, ((rows, seed), pruned) in enumerate(zip(jobs, MIXED)):
        pruned_model = pruned_copy(model, pruned)
        expected = reference_weights(pruned_model, tokenizer, rows, settings, seed)
        trained = stack.load_into(i, copy.deepcopy(model))
        got = {n: p.detach() for n, p in pruned_copy(trained, pruned).named_parameters()}
        assert set(got) == set(expected)
        assert_same_weights(got, expected, f"model {i} (pruned {pruned})")
        if pruned:  # what surgery removes was not touched
            state = stack.state_of(i)
            layer = pruned[0][0]
            for part in ("query", "key", "value"):
                name = next(n for n in state if f"layer.{layer}.attention.self.{part}.weight" in n)
                h = pruned[0][1]
                assert torch.equal(state[name][h * 8:(h + 1) * 8], start[name].detach()[h * 8:(h + 1) * 8])


def test_masked_features_equal_pruned_models(tokenizer, encoded):
    """Features of a masked stack: each model pools its own last layers (a removed layer is not one)."""
    ids, _ = encoded
    model = tiny_model(tokenizer, layers=3)
    settings = ScoreSettings(feature_layers=2)
    stack = StackedMLM.masked(model, MIXED)
    rows = [ids[:25], ids[20:70], ids[5:9], ids[30:60]]
    got = features_stacked(stack, rows, tokenizer.pad_token_id, settings, EngineOptions(feature_batch=16))
    for x, r, pruned in zip(got, rows, MIXED):
        expected = features(pruned_copy(model, pruned), r, tokenizer.pad_token_id, settings, CPU)
        assert x.shape == expected.shape == (len(r), 64)
        np.testing.assert_allclose(x, expected, atol=1e-5)


def test_pack_scores_equal_reference_without_dropout(tokenizer, decided, svm_inputs):
    ids, labels = decided
    model = tiny_model(tokenizer, layers=3, initializer_range=LIVELY)
    datasets = {"a": (ids, labels), "b": (ids[:90], labels[:90])}
    tasks = [SeedTask(tuple(sorted(p)), d, s) for p, d, s in
             ((MIXED[1], "a", 1), (MIXED[2], "b", 2), ((), "a", 2), (MIXED[3], "b", 1))]
    sizes = SizeCache(model)
    got = score_pack(model, tokenizer, datasets, tasks, SCORE_SETTINGS, CPU, sizes=sizes,
                     stages=svm_inputs.engine_stages)
    for task, score in zip(tasks, got):
        d_ids, d_labels = datasets[task.dataset]
        expected = score_seed(model, tokenizer, d_ids, d_labels, task.pruned, task.seed, SCORE_SETTINGS, CPU,
                              stages=svm_inputs.stages)
        svm_inputs.assert_engine_equals(task.pruned, task.seed, svm_inputs.last_reference())
        assert score.f1 == pytest.approx(expected.f1, abs=1e-3)
        assert (score.n_params, score.size_bytes) == (expected.n_params, expected.size_bytes)
    assert len({s.adjust_seconds for s in got}) == 1  # the pack's shared time
    assert len(sizes._sizes) == 4


def test_plan_packs_groups_similar_lengths():
    tasks = [SeedTask((), d, s) for d in ("short", "mid", "long") for s in (1, 2, 3)]
    steps = {t: {"short": 10, "mid": 12, "long": 40}[t.dataset] for t in tasks}
    packs = plan_packs(tasks[::-1], steps, size=4)
    assert [[(t.dataset, t.seed) for t in p] for p in packs] == [
        [("short", 1), ("short", 2), ("short", 3), ("mid", 1)], [("mid", 2), ("mid", 3)],
        [("long", 1), ("long", 2), ("long", 3)]]
    assert plan_packs(tasks, steps, size=4) == packs  # the input order does not matter
    assert [len(p) for p in plan_packs(tasks, steps, size=100, ratio=5.0)] == [9]
    assert finetune_steps(33, ScoreSettings(batch_size=16, epochs=4)) == 12


def test_auto_pack_size_on_cpu_follows_the_ram(tokenizer, monkeypatch):
    """On CPU the pack size is what fits in half the machine's RAM, at most 16: a big model on a
    small machine gets a small pack instead of running out of memory."""
    import headprune.engine.packing as packing

    model = tiny_model(tokenizer)
    per_model = 16 * sum(p.numel() for p in model.parameters())  # the weights' share of the estimate
    sizes = {}
    for ram in (None, 0, 4 * per_model, 8 * per_model, 64 * per_model, 10**15):
        monkeypatch.setattr(packing, "total_ram", lambda ram=ram: ram)
        sizes[ram] = packing.auto_pack_size(model, CPU)
    assert sizes[None] == 16 and sizes[0] == 1 and sizes[10**15] == 16
    assert 1 <= sizes[4 * per_model] <= 2 < sizes[8 * per_model] <= 4  # activations make it at most these
    assert sizes[64 * per_model] == 16
    monkeypatch.undo()
    assert 1 <= packing.auto_pack_size(model, CPU) <= 16


def test_batched_executor_packs(tokenizer, decided, svm_inputs):
    ids, labels = decided
    model = tiny_model(tokenizer, layers=3, initializer_range=LIVELY)
    context = EvalContext(model, tokenizer, {"a": (ids, labels), "b": (ids[:90], labels[:90])}, SCORE_SETTINGS, "cpu")
    tasks = [SeedTask(tuple(sorted(p)), d, s) for p in MIXED[:3] for d in ("a", "b") for s in (1, 2)]
    executor = BatchedExecutor(EngineOptions(pack=True, pack_models=5, svm_workers=2), svm_inputs.engine_stages)
    assert executor.store_tag == "batched-packed" and BatchedExecutor().store_tag == "batched"
    results = dict(executor.run(context, tasks))
    assert set(results) == set(tasks)
    for task in tasks:  # with pack_models=5, (MIXED[1], "b", 2) trains in a pack of its own
        d_ids, d_labels = context.datasets[task.dataset]
        expected = score_seed(model, tokenizer, d_ids, d_labels, task.pruned, task.seed, SCORE_SETTINGS, CPU,
                              stages=svm_inputs.stages)
        svm_inputs.assert_engine_equals(task.pruned, task.seed, svm_inputs.last_reference())
        assert results[task].f1 == pytest.approx(expected.f1, abs=1e-3)
        assert results[task].n_params == expected.n_params


def test_a_resumed_run_trains_the_packs_an_uninterrupted_one_would(tokenizer, encoded):
    """With dropout, a model's training depends on which models trained with it. Given the whole
    batch, the executor plans its packs over it: the tasks left by a partial run (here some of every
    pack, as a run killed in the middle of packs leaves them) get exactly the features and scores of
    an uninterrupted run. Planned over the left tasks alone, the packs and so the features differ."""
    features = {}

    def recording_svm(trained, k, settings, device):  # what the SVM gets, by (pruned set, seed, rows)
        features[(trained.pruned[k], trained.seeds[k], len(trained.labels[k]))] = trained.features[k].copy()
        return svm_score(trained, k, settings, device)

    recording = EngineStages(svm=recording_svm)
    ids, labels = encoded
    model = tiny_model(tokenizer, layers=3, dropout=True)
    context = EvalContext(model, tokenizer, {"a": (ids, labels), "b": (ids[:60], labels[:60])}, SCORE_SETTINGS, "cpu")
    tasks = [SeedTask(tuple(sorted(p)), d, s) for p in MIXED[:3] for d in ("a", "b") for s in (1, 2)]
    options = EngineOptions(pack=True, pack_models=4, svm_workers=1)
    full = dict(BatchedExecutor(options, recording).run(context, tasks))
    full_features, features = features, {}
    left = tasks[::3]
    resumed = dict(BatchedExecutor(options, recording).run(context, left, batch=tasks))
    assert list(resumed) == [t for t in full if t in set(left)]  # only the left tasks, in the full run's order
    assert [(resumed[t].f1, resumed[t].n_params) for t in left] == [(full[t].f1, full[t].n_params) for t in left]
    assert len(features) == len(left)  # stored tasks trained again, but not scored
    for key, x in features.items():
        np.testing.assert_array_equal(x, full_features[key])
    features.clear()
    dict(BatchedExecutor(options, recording).run(context, left))
    assert any(not np.array_equal(x, full_features[key]) for key, x in features.items())


def test_the_scorer_hands_the_whole_batch_to_the_executor(tmp_path) -> None:
    """Scorer.run computes only what the store lacks, and tells the executor the whole batch."""
    from headprune.executors import InProcessExecutor
    from headprune.scorer import Scorer
    from headprune.store import ResultStore

    calls = []

    class Recording(InProcessExecutor):
        plans_batch = True  # declares that it wants the whole batch

        def run(self, context, tasks, batch=None):
            calls.append((list(tasks), None if batch is None else list(batch), sorted(context.datasets)))
            yield from super().run(context, tasks, batch)

    scorer = Scorer(tiny_base(tmp_path / "m"), ResultStore(tmp_path / "s.sqlite"),
                    ScoreSettings(epochs=1, n_folds=2), seeds=(1,), executor=Recording())
    first = scorer.tasks_for([([], "person")])
    scorer.run(first)
    batch = scorer.tasks_for([([], "person"), ([(0, 1)], "hobbit")])
    scorer.run(batch + batch[:1])
    assert calls[1] == ([batch[1]], batch, ["hobbit", "person"])
    # An executor that does not plan over the batch is not handed it.
    Recording.plans_batch = False
    more = scorer.tasks_for([([(0, 2)], "person")])
    scorer.run(more + batch)
    assert calls[2] == (more, None, ["hobbit", "person"])


# ----------------------------------------------------------------------------- batches drawn in worker processes


def test_batch_preparer_draws_the_same_batches_in_worker_processes(tokenizer, encoded):
    from headprune.engine.batches import BatchPreparer, job_stream

    ids, _ = encoded
    settings = ScoreSettings(epochs=2, batch_size=4, mlm_probability=0.1)
    jobs = [(ids[:18], 1), (ids[20:50], 2), (ids[50:55], 3)]
    preparer = BatchPreparer(workers=2)
    try:
        futures = preparer.prepare(tokenizer, jobs, settings)
        for (rows, seed), future in zip(jobs, futures):
            here = list(job_stream(tokenizer, rows, seed, settings))
            there = future.result(timeout=300)
            assert len(here) == len(there) == 2 * -(-len(rows) // 4)
            for a, b in zip(here, there):
                assert (a is None) == (b is None)
                if a is not None:
                    for field in ("input_ids", "attention", "positions", "targets"):
                        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
                    assert a.lr == b.lr
        model = tiny_model(tokenizer)
        states = []
        for prepared in (None, futures):
            stack = StackedMLM.replicate(model, len(jobs))
            adjust_stacked(stack, tokenizer, jobs, settings, EngineOptions(), prepared=prepared)
            states.append([stack.state_of(i) for i in range(len(jobs))])
        for plain, ahead in zip(*states):
            assert all(torch.equal(plain[n], ahead[n]) for n in plain)
    finally:
        preparer.close()
    assert BatchPreparer(0).prepare(tokenizer, jobs, settings) == [None, None, None]
    assert EngineOptions().resolved_prep_workers(CPU) == 0


def test_a_pack_that_runs_out_of_gpu_memory_is_halved(tokenizer, encoded):
    """`auto_pack_size` only estimates: a part that does not fit is split, and later parts follow."""
    from headprune.engine.stages import train_pack

    ids, labels = encoded
    model = tiny_model(tokenizer)
    context = EvalContext(model, tokenizer, {"a": (ids, labels)}, SCORE_SETTINGS, "cpu")
    tasks = [SeedTask(p, "a", s) for p in ((), ((0, 1),), ((1, 2),)) for s in (1, 2, 3)]
    sizes_tried = []

    def small_gpu(base_model, tokenizer, datasets, part, *args, **kwargs):
        sizes_tried.append(len(part))
        if len(part) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return train_pack(base_model, tokenizer, datasets, part, *args, **kwargs)

    executor = BatchedExecutor(EngineOptions(pack=True, pack_models=9, svm_workers=1),
                               EngineStages(train_pack=small_gpu))
    results = dict(executor.run(context, tasks))
    assert set(results) == set(tasks)
    assert sizes_tried == [9, 4, 2, 2, 2, 2, 1]
    assert executor._fits == 2


def test_bf16_autocast_path_of_a_masked_pack(tokenizer, encoded):
    """The precision a GPU trains in (bf16 autocast, fp32 master weights and Adam state), run on the
    CPU: the same code path, no dtype clash, and weights close to the fp32 training."""
    ids, _ = encoded
    model = tiny_model(tokenizer, "roberta", layers=3)
    settings = ScoreSettings(epochs=1, batch_size=4, learning_rate=1e-3)
    jobs = [(ids[:16], 1), (ids[10:30], 2), (ids[30:42], 3), (ids[40:60], 4)]
    states = {}
    for amp in (False, True):
        stack = StackedMLM.masked(model, MIXED)
        adjust_stacked(stack, tokenizer, jobs, settings, EngineOptions(amp=amp))
        assert all(t.dtype == torch.float32 for t in stack.params.values())
        states[amp] = [stack.state_of(i) for i in range(len(jobs))]
        got = features_stacked(stack, [ids[:9]] * 4, tokenizer.pad_token_id, settings)
        assert all(x.dtype == np.float32 and np.isfinite(x).all() for x in got)
    start = dict(model.named_parameters())
    for exact, half in zip(states[False], states[True]):
        # Adam's steps are ~lr whatever the gradient's size, so bf16 rounding can flip single tiny
        # updates; the updates as a whole must still point the same way (a different training would not).
        a = torch.cat([(exact[n] - start[n].detach()).flatten() for n in exact])
        b = torch.cat([(half[n] - start[n].detach()).flatten() for n in exact])
        assert a.norm() > 0 and torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.999  # other seeds: 0.77-0.94


def test_fast_masking_draws_the_real_collators_batches(tokenizer, encoded):
    """`FastMasking` (no per-row Python) against `DataCollatorForLanguageModeling` with the same seed:
    identical input ids, attention masks and labels, batch after batch; a tokenizer on which it would
    differ is detected and gets the real collator."""
    from transformers import DataCollatorForLanguageModeling

    from headprune.engine.batches import FastMasking, fast_masking_matches

    ids, _ = encoded
    assert fast_masking_matches(tokenizer, 0.15)
    real = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3, seed=11)
    fast = FastMasking(tokenizer, 0.3, seed=11)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        rows = [ids[i] for i in torch.randint(len(ids), (int(torch.randint(1, 17, (1,), generator=g)),),
                                              generator=g).tolist()]
        a, b = real([{"input_ids": r} for r in rows]), fast(rows)
        assert all(torch.equal(a[k], b[k]) for k in ("input_ids", "attention_mask", "labels"))
    left = copy.deepcopy(tokenizer)
    left.padding_side = "left"
    assert not fast_masking_matches(left, 0.15)


def test_batches_drawn_here_until_the_workers_lists_are_ready(tokenizer, encoded):
    """The first ticks are drawn in process while the workers' lists are not ready; the switch to
    a list mid-stream (skipping what was drawn) gives exactly the plain training."""
    import threading
    from concurrent.futures import Future

    import headprune.engine.batches as engine  # where `training_steps` looks `job_stream` up
    from headprune.engine.batches import job_stream

    ids, _ = encoded
    settings = ScoreSettings(epochs=1, batch_size=4, learning_rate=1e-3)
    jobs = [(ids[:24], 1), (ids[20:50], 2)]
    model = tiny_model(tokenizer)
    plain = StackedMLM.replicate(model, 2)
    adjust_stacked(plain, tokenizer, jobs, settings)
    lists = [list(job_stream(tokenizer, rows, seed, settings)) for rows, seed in jobs]
    gate = threading.Event()

    class Tracking(Future):  # a future that becomes ready after a few ticks were drawn here
        def __init__(self, index):
            super().__init__()
            self.index = index

        def done(self):
            return gate.is_set()

        def result(self, timeout=None):
            return lists[self.index]

    prepared = [Tracking(0), Tracking(1)]
    original = job_stream
    counts = []

    def counting_stream(*args, **kwargs):
        for k, item in enumerate(original(*args, **kwargs)):
            counts.append(k)
            if len(counts) >= 4:
                gate.set()  # after 4 batches drawn here, the lists are "ready"
            yield item

    engine.job_stream = counting_stream
    try:
        stacked = StackedMLM.replicate(model, 2)
        adjust_stacked(stacked, tokenizer, jobs, settings, prepared=prepared)
    finally:
        engine.job_stream = original
    assert len(counts) == 4  # two ticks of two jobs drawn here, the other 10 batches taken from the lists
    for i in range(2):
        a, b = plain.state_of(i), stacked.state_of(i)
        assert all(torch.equal(a[n], b[n]) for n in a)
