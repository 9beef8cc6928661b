"""Progress: time left from the computed evaluations only, weighted by their work."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from headprune import progress as progress_module
from headprune.progress import RunProgress, format_seconds


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    return now


def quiet() -> RunProgress:
    return RunProgress(console=Console(file=io.StringIO(), force_terminal=False), every=0.0)


def test_time_left_ignores_stored_evaluations(clock):
    bar = quiet()
    bar.start_stage("H1 OI", 10)
    assert bar.time_left() is None
    bar.advance(cached=True)  # answered by the store: no time, no estimate yet
    assert bar.time_left() is None
    clock[0] += 30.0
    bar.advance()
    assert bar.time_left() == pytest.approx(8 * 30.0)


def test_time_left_weighs_evaluations_by_their_work(clock):
    """Step 1: two small finetunings first, one big one left: the estimate scales with rows."""
    bar = quiet()
    bar.start_stage("Step 1: importance", 3, total_work=100 + 100 + 1000)
    for rows in (100, 100):
        clock[0] += 10.0
        bar.advance(work=rows)
    assert bar.time_left() == pytest.approx(1000 * 20.0 / 200)
    bar.set_total(4)  # one more evaluation (e.g. a search that grew): the work grows in proportion
    assert bar.total_work == pytest.approx(1600)


def test_plain_lines_without_a_terminal(clock):
    out = io.StringIO()
    bar = RunProgress(console=Console(file=out, force_terminal=False, width=200), every=0.0)
    bar.start_stage("H2 OI", 2)
    clock[0] += 5.0
    bar.advance()
    bar.end_stage()
    text = out.getvalue()
    assert "[H2 OI] 2 evaluations" in text and "[H2 OI] 1/2 evaluations, 0 from store, ~5s left" in text
    assert "[H2 OI] done: 1 evaluations, 0 from store" in text
    assert format_seconds(3725) == "1h02m"
