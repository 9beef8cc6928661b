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


LONG_STAGE = "Step 2: H2 OI on SemEval18, SentiStrength, Vader and SemEval17"


@pytest.mark.parametrize("force_color", [None, "1"], ids=["plain", "FORCE_COLOR"])
def test_every_update_is_one_whole_line_when_not_a_terminal(clock, monkeypatch, capsys, force_color):
    """CI, nohup, a log file: no wrapping at a narrow width (`~16m16s` on one line, `left` on the next),
    no carriage returns, no live bar even where FORCE_COLOR makes rich call the file a terminal."""
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    if force_color is None:
        monkeypatch.delenv("FORCE_COLOR", raising=False)
    else:
        monkeypatch.setenv("FORCE_COLOR", force_color)
    bar = RunProgress(every=0.0)  # the command line's console: standard error, captured here (not a tty)
    assert not bar.live and bar.console.width == 40
    bar.log(f"model tiny-bert: 2 layers x 4 heads, fingerprint {'f' * 40}, device cpu")
    bar.start_stage(LONG_STAGE, 1234)
    bar.advance(cached=True)
    for _ in range(3):
        clock[0] += 0.8
        bar.advance()
    bar.end_stage()
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert len(lines) == 7, lines  # log, start, 4 updates, done: not one fragment more
    assert lines[0] == f"model tiny-bert: 2 layers x 4 heads, fingerprint {'f' * 40}, device cpu"
    assert lines[1] == f"[{LONG_STAGE}] 1234 evaluations"
    assert lines[2] == f"[{LONG_STAGE}] 1/1234 evaluations, 1 from store"
    for n, line in enumerate(lines[3:6], start=2):
        assert line.startswith(f"[{LONG_STAGE}] {n}/1234 evaluations, 1 from store, ~") and line.endswith(" left")
    assert "~16m" in lines[3]  # 1231 left at 0.8 s each
    assert lines[6] == f"[{LONG_STAGE}] done: 4 evaluations, 1 from store"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_keeps_the_live_bar(clock):
    screen = _Terminal()
    bar = RunProgress(console=Console(file=screen, force_terminal=True, width=40), every=0.0)
    assert bar.live
    bar.start_stage(LONG_STAGE, 3)
    bar.advance()
    bar.end_stage()
    assert "\x1b[" in screen.getvalue() and "1234 evaluations" not in screen.getvalue()  # rich's live bar
