"""The report's page: `write_report` renders a run's summary.json into report/report.html (one
self-contained file: figures are embedded PNGs, CSS inline, no script, no external URL),
report/tables.md and report/figures/*.png. Parts a run does not have (no H3, no generalization,
...) are left out. The page lists its sections in `SECTIONS`: adding a section is adding its
function there."""

from __future__ import annotations

import html
import os
from collections.abc import Callable
from pathlib import Path

from ..summary import Summary, load_summary, malformed
from .comparisons import comparison_section, step2_comparison_section, step2_fresh_section
from .facts import RunFacts, facts
from .orders import orders_section
from .sections import (
    adjust_time_section,
    architectures_section,
    budget_text,
    h1_section,
    h2_section,
    h3_section,
    heads_pruned_section,
    importance_section,
    overview_section,
    racing_section,
    run_section,
    size_section,
)
from .tables import Section

# The page's sections in order: each renders one part of the run, or None where the run has none.
SECTIONS: list[Callable[[RunFacts], Section | None]] = [
    overview_section,
    importance_section,
    architectures_section,
    h1_section,
    orders_section,
    h2_section,
    h3_section,
    racing_section,
    step2_comparison_section,
    step2_fresh_section,
    comparison_section,
    heads_pruned_section,
    size_section,
    adjust_time_section,
    run_section,
]

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1200px;
padding:0 24px 48px;color:#1a202c;line-height:1.45}
h1{margin-top:24px}h2{border-bottom:2px solid #cbd5e0;padding-bottom:4px;margin-top:40px}
h3{margin-top:28px}nav ul{columns:3;padding-left:18px}
table{border-collapse:collapse;margin:0 0 18px;font-size:13px}
th,td{border:1px solid #cbd5e0;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#edf2f7}td.l,th.l{text-align:left}
.caption{font-weight:600;margin:18px 0 4px}
figure{margin:12px 0 24px}figure img{max-width:100%;height:auto;border:1px solid #e2e8f0}
figcaption{font-size:13px;color:#4a5568}pre{background:#f7fafc;border:1px solid #e2e8f0;padding:10px;
overflow-x:auto;font-size:12px}.note{color:#4a5568;font-size:13px}.figs{display:flex;flex-wrap:wrap;gap:12px}
"""


def write_report(run_dir: str | os.PathLike) -> Path:
    """Render `run_dir/summary.json` into `run_dir/report/` (report.html, tables.md, figures/); returns report.html."""
    summary = load_summary(run_dir)
    source = summary.path  # set by load_summary: the file read
    out = source.parent / "report"
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for old in figures.glob("*.png"):
        old.unlink()  # figures of an earlier rendering may no longer apply
    try:
        run = facts(summary, figures)
        sections = [section for build in SECTIONS if (section := build(run)) is not None]
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise malformed(source, f"{type(err).__name__}: {err}") from None
    title = f"headprune report: {summary.model.name if summary.model.name is not None else 'model'}"
    (out / "report.html").write_text(_html_page(title, summary, sections), encoding="utf-8")
    tables = [f"# {title}\n"] + [t.markdown() for section in sections for t in section.tables]
    (out / "tables.md").write_text("\n".join(tables), encoding="utf-8")
    return out / "report.html"


def _html_page(title: str, summary: Summary, sections: list[Section]) -> str:
    nav = "".join(f'<li><a href="#{s.id}">{html.escape(s.title)}</a></li>' for s in sections)
    body = "".join(
        f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>{"".join(s.blocks)}</section>' for s in sections
    )
    model = summary.model
    name = model.name if model.name is not None else ""
    budget = budget_text(summary)
    subtitle = f"{html.escape(name)}: {model.n_layers} layers x {model.n_heads} heads" + (
        f" &middot; {html.escape(summary.date)}" if summary.date else ""
    ) + (f" &middot; time budget {html.escape(budget)}" if budget else "")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f'<header><h1>{html.escape(title)}</h1><p class="note">{subtitle}</p><nav><ul>{nav}</ul></nav></header>'
        f"{body}</body></html>\n"
    )


__all__ = ["SECTIONS", "write_report"]
