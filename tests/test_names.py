"""Model names (`names.ModelName`): built and read in one place, as the dissertation writes them."""

from __future__ import annotations

import pytest

from headprune.names import COMPLETE, ModelName


@pytest.mark.parametrize(("model", "label"), [
    (ModelName.complete(), "CM"),
    (ModelName.chosen("OI", "H1"), "MOIH1"),
    (ModelName.chosen("OI-layer", "H3"), "MOI-layerH3"),
    (ModelName.chosen("A12", "H2"), "MA12H2"),
    (ModelName.mean_of_random("H2"), "MAMH2"),
])
def test_a_name_is_written_and_read_back(model: ModelName, label: str) -> None:
    assert model.label == str(model) == label
    assert ModelName.parse(label) == model


def test_what_a_name_says() -> None:
    assert ModelName.parse(COMPLETE).is_complete and not ModelName.parse("MA1H1").is_complete
    chosen = ModelName.parse("MfisherH1")
    assert (chosen.order, chosen.strategy, chosen.random_mean) == ("fisher", "H1", False)
    mean = ModelName.parse("MAMH3")
    assert (mean.order, mean.strategy, mean.random_mean) == (None, "H3", True)


@pytest.mark.parametrize("label", ["", "M", "MOI", "OIH1", "MH1", "cm"])
def test_a_name_no_run_writes_is_refused(label: str) -> None:
    with pytest.raises(ValueError, match="is not a model name"):
        ModelName.parse(label)
