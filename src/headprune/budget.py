"""`headprune run --budget 45m`: the most faithful profile of the ladder (`profiles.LADDER`) whose
dry-run estimate on this machine fits the budget.

The estimate is `--dry-run`'s (`plan.estimate`: the plan's evaluations times one calibrated adjusting
step on this device), taken from the most faithful profile down, stopping at the first that fits.
The run then stops at the budget as `--time-limit` does; the summary records the budget and the
estimates that chose (`Summary.budget`)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import HeadpruneError
from .pipeline import Pipeline

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s)?")


def parse_budget(text: str) -> float:
    """'45m', '1h30m', '2h', '90s' or a plain number of minutes -> seconds (positive)."""
    raw = text.strip().lower().replace(" ", "")
    try:
        seconds = 60 * float(raw)
    except ValueError:
        match = _DURATION.fullmatch(raw)
        if not raw or not match:
            raise HeadpruneError(f"--budget {text}: write a duration such as 45m, 1h30m, 2h or 90s") from None
        hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
        seconds = 3600 * hours + 60 * minutes + secs
    if not (math.isfinite(seconds) and seconds > 0):
        raise HeadpruneError(f"--budget {text}: must be a duration of more than zero")
    return seconds


def estimated_seconds(pipeline: Pipeline) -> float:
    """`--dry-run`'s estimate of the whole run (at most, when raced), calibrated on this device."""
    from .plan import estimate, plan

    return float(estimate(pipeline, plan(pipeline))["total_seconds"])


@dataclass
class Choice:
    """The profile a budget chose, and the estimates it compared (profile -> seconds)."""

    profile: str
    budget_seconds: float
    estimates: dict[str, float] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return self.estimates[self.profile] <= self.budget_seconds

    def record(self, text: str) -> dict:
        """What summary.json keeps (`Summary.budget`)."""
        return {"budget": text, "budget_seconds": self.budget_seconds, "profile": self.profile,
                "fits": self.fits, "estimated_seconds": dict(self.estimates)}


def choose(candidates: dict[str, Pipeline], budget_seconds: float,
           estimate: Callable[[Pipeline], float] | None = None) -> Choice:
    """Among `candidates` (profile -> pipeline, least faithful first), the most faithful whose
    `estimate` (default `estimated_seconds`, the dry run's, calibrated here; looked up when called,
    so that a test of the command line can replace the machine's calibration) fits `budget_seconds`;
    none fitting: the least faithful (the run then stops at the budget and a rerun goes on)."""
    estimate = estimate or estimated_seconds
    if not candidates:
        raise HeadpruneError("--budget: no profile to choose from")
    estimates: dict[str, float] = {}
    for name in reversed(list(candidates)):
        estimates[name] = estimate(candidates[name])
        if estimates[name] <= budget_seconds:
            return Choice(name, budget_seconds, estimates)
    return Choice(next(iter(candidates)), budget_seconds, estimates)


__all__ = ["Choice", "choose", "estimated_seconds", "parse_budget"]
