"""headprune's public API: the names `import headprune` offers (`__all__`). Changing the surface is a
deliberate edit of `PUBLIC` here (and of the README's Python API section); everything else is the
implementation and may change."""

from __future__ import annotations

import inspect
import pkgutil

import headprune

PUBLIC = [
    "BaseModel",
    "Config",
    "Criterion",
    "Dataset",
    "GradientImportance",
    "GreedyResult",
    "H1Result",
    "HeadSet",
    "HeadpruneError",
    "MagnitudeImportance",
    "Order",
    "RandomImportance",
    "ResultStore",
    "Scorer",
    "Summary",
    "__version__",
    "criterion_for",
    "h1_search",
    "h2_search",
    "h3_search",
    "importance_order",
    "load_base",
    "load_config",
    "load_dataset",
    "load_model",
    "load_pruned",
    "load_summary",
    "prune_heads",
    "pruned_heads",
    "random_order",
    "rank_models",
    "run",
    "save_pruned",
    "verify_run",
    "write_report",
]


def test_the_public_names_are_the_listed_ones() -> None:
    assert sorted(headprune.__all__) == sorted(PUBLIC)
    assert len(set(headprune.__all__)) == len(headprune.__all__)


def test_every_public_name_is_there_documented_and_from_headprune() -> None:
    for name in PUBLIC:
        value = getattr(headprune, name)
        if name == "__version__":
            assert isinstance(value, str) and value
            continue
        assert value.__module__.startswith("headprune."), name
        assert (inspect.getdoc(value) or "").strip(), f"{name} has no docstring"


def test_the_searches_return_typed_results() -> None:
    """`h1_search` gives an `H1Result`, `h2_search`/`h3_search` a `GreedyResult`: attributes, not keys."""
    order = [(0, 0), (0, 1), (1, 0), (1, 1)]

    def evaluate(requests):  # pruning head (1, 1) helps on every dataset; anything else hurts
        return [0.8 + 0.1 * ((1, 1) in pruned) - 0.15 * len(pruned - {(1, 1)}) for pruned, _ in requests]

    h1 = headprune.h1_search(order, ["a", "b"], evaluate)
    assert isinstance(h1, headprune.H1Result)
    assert h1.chosen_k == 1 and h1.pruned_heads == [(1, 1)]
    for search in (headprune.h2_search, headprune.h3_search):
        greedy = search(order, ["a", "b"], evaluate)
        assert isinstance(greedy, headprune.GreedyResult)
        assert greedy.pruned_heads == [(1, 1)] and greedy.per_dataset["a"].n_pruned == 1
    assert headprune.HeadSet(h1.pruned_heads).spec(2) == "1:1"


def test_no_public_name_shadows_a_module() -> None:
    """`import headprune.verify as m` must give the module (tools and tests patch modules): hence
    `verify_run`, not `verify`."""
    import headprune.verify as verify_module

    assert inspect.ismodule(verify_module)
    assert not set(PUBLIC) & {module.name for module in pkgutil.iter_modules(headprune.__path__)}
