"""The report's tables (HTML and Markdown from one `Table`), its sections, and how numbers are written.

F1 values are shown x100 with two decimals, as in the dissertation; `pct_vs_cm` is read as
percentage points (`100 * (mean / CM mean - 1)`, see `generalize.summarize`)."""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field


@dataclass
class Cell:
    text: str
    bold: bool = False


@dataclass
class Table:
    """A table rendered both to HTML and to Markdown. A cell's lines are separated by newlines."""

    id: str
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    note: str = ""

    def numeric_columns(self) -> list[bool]:
        """Columns after the first whose every cell starts with a number: right-aligned."""
        return [
            i > 0 and all(_NUMERIC.match(row[i].text) for row in self.rows if i < len(row))
            for i in range(len(self.columns))
        ]

    def html(self) -> str:
        align = ["" if n else ' class="l"' for n in self.numeric_columns()]
        head = "".join(f"<th{a}>{_html_lines(c)}</th>" for a, c in zip(align, self.columns))
        body = []
        for row in self.rows:
            cells = []
            for a, cell in zip(align, row):
                text = _html_lines(cell.text)
                cells.append(f"<td{a}><b>{text}</b></td>" if cell.bold else f"<td{a}>{text}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        note = f'<p class="note">{html.escape(self.note)}</p>' if self.note else ""
        return (
            f'<p class="caption">{html.escape(self.title)}</p><table id="{self.id}">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"
        )

    def markdown(self) -> str:
        lines = [f"## {self.title}", ""]
        lines.append("| " + " | ".join(_md_text(c) for c in self.columns) + " |")
        lines.append("|" + "|".join("---:" if n else ":---" for n in self.numeric_columns()) + "|")
        for row in self.rows:
            texts = [f"**{_md_text(c.text)}**" if c.bold and c.text else _md_text(c.text) for c in row]
            lines.append("| " + " | ".join(texts) + " |")
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines) + "\n"


_NUMERIC = re.compile(r"^(?:[-+]?[\d.,]+|n/a|-)(?:\s|%|$)")


def _html_lines(text: str) -> str:
    return "<br>".join(html.escape(line) for line in str(text).split("\n"))


def _md_text(text: str) -> str:
    return " ".join(str(text).split("\n")).replace("|", "\\|")


def row_cells(values: list[str]) -> list[Cell]:
    return [Cell(v) for v in values]


def fmt_f1(value) -> str:
    return "n/a" if value is None else f"{100 * float(value):.2f}"


def fmt_pct(value, complete: bool = False) -> str:
    if complete:
        return "100%"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):+.2f}%"


def pct_of(value: float, reference: float) -> float | None:
    return None if not reference else 100.0 * (value / reference - 1.0)


def fmt_int(value) -> str:
    return f"{int(value):,}"


def fmt_megabytes(size_bytes) -> str:
    return f"{int(size_bytes) / 1e6:,.2f} MB"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))


def datasets_of(per_model: dict[str, dict]) -> list[str]:
    """Datasets in first-seen order across models."""
    return list(dict.fromkeys(ds for per_ds in per_model.values() for ds in per_ds))


@dataclass
class Section:
    """One section of the page: its anchor, heading, HTML blocks in order, and its tables (for tables.md)."""

    id: str
    title: str
    blocks: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)


def add_table(section: Section, table: Table) -> None:
    """Append `table` to the section's page and to its tables."""
    section.tables.append(table)
    section.blocks.append(table.html())


__all__ = ["Cell", "Section", "Table", "add_table", "datasets_of", "fmt_f1", "fmt_int", "fmt_megabytes",
           "fmt_pct", "pct_of", "row_cells", "slug"]
