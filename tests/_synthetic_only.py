"""pytest plugin (`-p _synthetic_only`): deselect the tests that build a model or read the datasets,
keeping the cheap synthetic ones (used by test_hash_seed.py to rerun them under other hash seeds)."""

from __future__ import annotations

import pytest

HEAVY_FIXTURES = {"tiny_bert_dir", "tiny_roberta_dir", "air_data_dir", "person_frame"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    heavy = [item for item in items if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ()))]
    if heavy:
        config.hook.pytest_deselected(items=heavy)
        items[:] = [item for item in items if item not in heavy]
