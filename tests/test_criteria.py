"""The importance criteria beside OI (issue 16): each produces the expected order for a constructed
case; OI-layer and fisher are read from the same Step 1 finetunings as OI (one finetuning writes both
its rows), existing OI rows are reused unchanged; magnitude reads the weights of BERT and RoBERTa;
`criterion_for` is the one place that builds criteria from names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from _executors import Counting, Refusing
from headprune.base import load_base
from headprune.data import load_dataset
from headprune.errors import HeadpruneError
from headprune.families import family_of, module_at
from headprune.importance import (
    FisherImportance,
    GradientImportance,
    GradientLayerImportance,
    ImportanceSettings,
    MagnitudeImportance,
    RandomImportance,
    Step1Run,
    criterion_for,
    importance_order,
    random_order,
    rank_heads,
)
from headprune.importance.gradient import GateStatistics, GateSums, min_max, statistics_key_settings, step1_key_settings
from headprune.importance.magnitude import magnitude_matrix
from headprune.importance.statistics import per_layer_l2, share_of_total
from headprune.store import ResultStore
from headprune.surgery import encoder_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def statistics(abs_sums, squared_sums=None, batches=None) -> GateStatistics:
    squared_sums = squared_sums if squared_sums is not None else abs_sums
    return GateStatistics(abs_sums=abs_sums, squared_sums=squared_sums, batches=batches or [1] * len(abs_sums),
                          tokens=100)


# ----------------------------------------------------------------------------- names


def test_criterion_for_builds_every_named_criterion() -> None:
    assert type(criterion_for("OI")) is GradientImportance
    assert type(criterion_for("OI-layer")) is GradientLayerImportance
    assert type(criterion_for("fisher")) is FisherImportance
    assert type(criterion_for("magnitude")) is MagnitudeImportance
    a7 = criterion_for("A7")
    assert type(a7) is RandomImportance and a7.seed == 7 and a7.name == "A7"
    assert [criterion_for(n).kind for n in ("OI", "OI-layer", "fisher", "magnitude", "A1")] == [
        "importance", "importance", "importance", "weights", "random"]
    assert [criterion_for(n).name for n in ("OI", "OI-layer", "fisher", "magnitude")] == [
        "OI", "OI-layer", "fisher", "magnitude"]
    for bad in ("oi", "OI-Layer", "A0", "A", "B1", "gradient"):
        with pytest.raises(HeadpruneError) as info:
            criterion_for(bad)
        assert str(info.value) == (f"unknown order '{bad}': use OI, OI-layer, fisher, magnitude, or A<seed> for a "
                                   "random order (A1, A2, ...)")


# ----------------------------------------------------------------------------- raw statistics


def test_gate_sums_accumulate_abs_and_squared_gradients_per_epoch() -> None:
    sums = GateSums((2, 2), n_tokens=40)
    sums.add_batch(torch.tensor([[1.0, -2.0], [3.0, 0.0]]))
    sums.add_batch(torch.tensor([[0.0, 1.0], [-1.0, 2.0]]))
    sums.end_epoch()
    sums.add_batch(torch.tensor([[-2.0, 0.0], [0.0, 0.5]]))  # the second epoch starts from zero
    sums.end_epoch()
    stats = sums.statistics()
    assert stats.abs_sums == [[[1.0, 3.0], [4.0, 2.0]], [[2.0, 0.0], [0.0, 0.5]]]
    assert stats.squared_sums == [[[1.0, 5.0], [10.0, 4.0]], [[4.0, 0.0], [0.0, 0.25]]]
    assert stats.batches == [2, 1] and stats.tokens == 40
    assert GateStatistics.from_json(stats.to_json()) == stats


def test_fisher_ranks_by_squared_gradients_where_abs_gradients_disagree() -> None:
    """Head (0, 0) gets |g| = 2 and 2 (sum 4, squares 8); head (0, 1) gets 0 and 3.5 (sum 3.5, squares
    12.25): by |g| the first is more important, by the Fisher information the second."""
    sums = GateSums((1, 3), n_tokens=10)
    for g in ([2.0, 0.0, 0.1], [-2.0, 3.5, 0.1]):
        sums.add_batch(torch.tensor([g]))
    sums.end_epoch()
    stats = sums.statistics()
    fisher = FisherImportance([], [1]).epoch_matrices(stats)
    np.testing.assert_allclose(fisher[0], np.array([[8.0, 12.25, 0.02]]) / 20.27)
    assert rank_heads(fisher[0]) == [(0, 1), (0, 0), (0, 2)]
    assert rank_heads(np.array(stats.abs_sums[0])) == [(0, 0), (0, 1), (0, 2)]


def test_gradient_layer_normalises_each_layer_where_a_global_min_max_prunes_a_whole_layer() -> None:
    """Gradients ten times larger in layer 1 (near the classifier): a global min-max (Algorithm 2)
    ranks every head of layer 0 below every head of layer 1; per layer (Michel et al.), each layer's
    weakest head is compared with the other layers' weakest, and layer 1's (1, 0), small within its
    layer, is the least important."""
    sums = [[1.0, 2.0, 3.0], [10.0, 20.0, 100.0]]
    globally = rank_heads(min_max(torch.tensor(sums, dtype=torch.float64)).numpy())
    assert globally[-3:] == [(0, 2), (0, 1), (0, 0)]  # layer 0 goes first
    (layered,) = GradientLayerImportance([], [1]).epoch_matrices(statistics([sums]))
    np.testing.assert_allclose(np.linalg.norm(layered, axis=1), [1.0, 1.0])
    np.testing.assert_allclose(layered[0], np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0))
    assert rank_heads(layered) == [(1, 2), (0, 2), (0, 1), (0, 0), (1, 1), (1, 0)]
    np.testing.assert_array_equal(per_layer_l2(np.zeros((2, 2))), np.zeros((2, 2)))  # no gradient: no NaN
    np.testing.assert_array_equal(share_of_total(np.zeros((2, 2))), np.zeros((2, 2)))


def _fill_statistics_rows(store: ResultStore, base, dataset, seeds, per_seed) -> None:
    """Statistics rows as a finetuning would have stored them (so the criterion needs no finetuning)."""
    settings = statistics_key_settings(base, ImportanceSettings(epochs=1))
    for seed, stats in zip(seeds, per_seed):
        store.put_importance(store.importance_key(base.fingerprint, dataset.content_hash, seed, settings),
                             model=base.fingerprint, dataset=dataset.name, dataset_hash=dataset.content_hash,
                             seed=seed, settings=settings, matrices=stats.to_json(), device="cpu")


def test_step1_criteria_order_from_stored_statistics_rows(tiny_bert_dir: Path, small_dataset_csv: Path,
                                                          tmp_path: Path) -> None:
    """OI-layer and fisher read the stored statistics rows (no finetuning runs), average each run's
    normalised epochs over seeds, and keep each run's own matrix for the stability measures."""
    base = load_base(str(tiny_bert_dir), warmup=None)  # 3 layers x 4 heads
    dataset = load_dataset(small_dataset_csv)
    abs_sums = [[1.0, 2.0, 3.0, 4.0], [10.0, 25.0, 30.0, 40.0], [100.0, 1.0, 200.0, 300.0]]
    squared = [[1.0, 1.0, 1.0, 50.0], [2.0, 2.0, 2.0, 2.0], [0.5, 3.0, 3.0, 3.0]]
    runs = [statistics([abs_sums], [squared]), statistics([[[2 * v for v in row] for row in abs_sums]],
                                                          [[[3 * v for v in row] for row in squared]])]
    store = ResultStore(tmp_path / "store.sqlite")
    _fill_statistics_rows(store, base, dataset, [1, 2], runs)
    settings = ImportanceSettings(epochs=1)

    stored_only = Step1Run(store=store, executor=Refusing())  # no finetuning may run
    layer = GradientLayerImportance([dataset], [1, 2], settings).order(base, stored_only)
    # Scaling a run changes nothing per layer: both runs give the same matrix, and so does the order.
    expected = per_layer_l2(np.array(abs_sums))
    np.testing.assert_allclose(np.array(layer.matrix), expected)
    assert layer.ranked == rank_heads(expected)
    assert layer.ranked[-1] == (2, 1)  # 1 among 100-300 in layer 2: the least important head
    assert layer.ranked[:3] == [(2, 3), (0, 3), (1, 3)]  # each layer's strongest first
    assert [(r.dataset, r.seed) for r in layer.runs] == [("small", 1), ("small", 2)]
    np.testing.assert_allclose(np.array(layer.runs[0].matrix), expected)
    assert layer.settings == {**step1_key_settings(base, settings), "statistics": "raw-abs-sq"}
    assert layer.kind == "importance" and layer.dataset_hashes == {"small": dataset.content_hash}

    fisher = FisherImportance([dataset], [1, 2], settings).order(base, stored_only)
    np.testing.assert_allclose(np.array(fisher.matrix), share_of_total(np.array(squared)))
    assert fisher.ranked[0] == (0, 3) and fisher.ranked[-1] == (2, 0)
    store.close()


def test_one_finetuning_feeds_oi_oi_layer_and_fisher(tiny_bert_dir: Path, small_dataset_csv: Path,
                                                     tmp_path: Path) -> None:
    """A finetuning that runs for any Step 1 criterion writes the OI row and the statistics row; the
    other criteria are then answered by the store. The raw sums are those of the same gradients."""
    base = load_base(str(tiny_bert_dir), warmup=None)
    dataset = load_dataset(small_dataset_csv)
    settings = ImportanceSettings(epochs=2)
    store = ResultStore(tmp_path / "store.sqlite")
    counting = Counting()
    run = Step1Run(store=store, executor=counting)
    fisher = FisherImportance([dataset], [1], settings).order(base, run)
    assert len(counting.tasks) == 1
    oi = GradientImportance([dataset], [1], settings).order(base, run)
    layer = GradientLayerImportance([dataset], [1], settings).order(base, run)
    assert len(counting.tasks) == 1  # OI and OI-layer came from the rows fisher's finetuning wrote
    assert oi.ranked == importance_order(base, [dataset], [1], settings).ranked  # OI is Algorithm 2, unchanged
    stats = GateStatistics.from_json(store.get_importance(store.importance_key(
        base.fingerprint, dataset.content_hash, 1, statistics_key_settings(base, settings))))
    assert stats.batches == [4, 4] and stats.tokens > len(dataset)  # 60 tweets in batches of 16, two epochs
    for abs_sums, squared in zip(stats.abs_sums, stats.squared_sums):
        a, q = np.array(abs_sums), np.array(squared)
        assert np.all(a > 0) and np.all(q <= a ** 2 + 1e-15) and np.all(q >= a ** 2 / 4 - 1e-15)
    np.testing.assert_allclose(np.array(layer.matrix), np.mean([per_layer_l2(np.array(m)) for m in stats.abs_sums],
                                                               axis=0))
    np.testing.assert_allclose(np.array(fisher.matrix),
                               np.mean([share_of_total(np.array(m)) for m in stats.squared_sums], axis=0))
    with store._conn as db:
        assert db.execute("SELECT COUNT(*) FROM importance").fetchone()[0] == 2
    store.close()


def test_stored_oi_rows_stay_valid_and_are_reused_unchanged(tiny_bert_dir: Path, small_dataset_csv: Path,
                                                            tmp_path: Path) -> None:
    """An OI row stored before the statistics rows existed answers OI as it always did. OI-layer needs
    the statistics row, so the finetuning runs once; the old OI row is left as it was."""
    base = load_base(str(tiny_bert_dir), warmup=None)
    dataset = load_dataset(small_dataset_csv)
    settings = ImportanceSettings(epochs=1)
    store = ResultStore(tmp_path / "store.sqlite")
    key = store.importance_key(base.fingerprint, dataset.content_hash, 1, step1_key_settings(base, settings))
    old = [[[0.1 * (4 * l + h) for h in range(4)] for l in range(3)]]
    store.put_importance(key, model=base.fingerprint, dataset=dataset.name, dataset_hash=dataset.content_hash,
                         seed=1, settings=step1_key_settings(base, settings), matrices=old, device="cpu")
    counting = Counting()
    run = Step1Run(store=store, executor=counting)
    oi = GradientImportance([dataset], [1], settings).order(base, run)
    assert counting.tasks == [] and oi.matrix == old[0]
    GradientLayerImportance([dataset], [1], settings).order(base, run)
    assert len(counting.tasks) == 1
    assert store.get_importance(key) == old
    store.close()


# ----------------------------------------------------------------------------- magnitude


def test_magnitude_ranks_a_zeroed_head_last_on_bert_and_roberta(tiny_model_dir: Path) -> None:
    base = load_base(str(tiny_model_dir), warmup=None)
    family = family_of(base.model.config)
    size = base.model.config.hidden_size // base.n_heads
    layer = encoder_layers(base.model)[1]
    head = slice(2 * size, 3 * size)
    with torch.no_grad():
        for path in (family.query, family.key, family.value):
            module_at(layer, path).weight[head, :] = 0.0
        module_at(layer, family.output).weight[:, head] = 0.0
    criterion = criterion_for("magnitude")
    order = criterion.order(base, Step1Run())  # a data-driven criterion's run is accepted, unused
    assert order.ranked[-1] == (1, 2)
    assert order.kind == "weights" and order.runs is None and order.dataset_hashes is None
    assert order.ranked == criterion.order(base).ranked  # deterministic
    matrix = np.array(order.matrix)
    assert matrix[1, 2] == 0.0 and np.all(np.delete(matrix.ravel(), 1 * base.n_heads + 2) > 0)
    # One head's value is the l2 norm of its Q, K, V rows and its O columns together.
    first = encoder_layers(base.model)[0]
    parts = [module_at(first, p).weight.detach()[:size, :] for p in (family.query, family.key, family.value)]
    parts.append(module_at(first, family.output).weight.detach()[:, :size])
    expected = float(torch.sqrt(sum((w.double() ** 2).sum() for w in parts)))
    assert matrix[0, 0] == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(magnitude_matrix(base.model), matrix)


def test_magnitude_of_a_pruned_model_is_refused(tiny_bert_dir: Path) -> None:
    from headprune.surgery import prune_heads

    base = load_base(str(tiny_bert_dir), warmup=None)
    prune_heads(base.model, {0: [1]})
    with pytest.raises(HeadpruneError, match="pruned already"):
        magnitude_matrix(base.model)


def test_random_orders_are_unchanged(tiny_bert_dir: Path) -> None:
    base = load_base(str(tiny_bert_dir), warmup=None)
    a2 = criterion_for("A2").order(base)
    assert a2.ranked == random_order(3, 4, seed=2).ranked and a2.kind == "random" and a2.name == "A2"
