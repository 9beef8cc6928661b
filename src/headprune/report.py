"""HTML report, Markdown tables and figures from a run's `summary.json` (dissertation Figs. 2-7, Tables 5-15).

`write_report(run_dir)` writes `run_dir/report/report.html` (one self-contained file: figures are
embedded PNGs, CSS inline, no script, no external URL), `report/tables.md` and
`report/figures/*.png`. Parts a run does not have (no H3, no generalization, ...) are left out.
F1 values are shown x100 with two decimals, as in the dissertation; `pct_vs_cm` is read as
percentage points (`100 * (mean / CM mean - 1)`, see `generalize.summarize`)."""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .curves import DEFAULT_SAFE_K_MARGIN, against_chance, answer, chance_sentence, compare_orders, pairs_method
from .generalize import mean_and_std, statement
from .racing import WALK_TEST_WORDS
from .summary import (
    COMPLETE,
    ChosenModel,
    DatasetScores,
    Generalization,
    GreedyResult,
    H1Result,
    MeanScore,
    RandomMean,
    RankingRow,
    Significance,
    Summary,
    load_summary,
    malformed,
)

STRATEGIES = ("H1", "H2", "H3")

# Colours of the head maps: kept, pruned, layer removed; the best model's frame.
_KEPT, _PRUNED, _REMOVED, _HIGHLIGHT = "#2b6cb0", "#e2e8f0", "#fbd5d5", "#dd6b20"

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


# ----------------------------------------------------------------------------- tables


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


def _cells(values: list[str]) -> list[Cell]:
    return [Cell(v) for v in values]


# ----------------------------------------------------------------------------- formatting


def _f1(value) -> str:
    return "n/a" if value is None else f"{100 * float(value):.2f}"


def _pct(value, complete: bool = False) -> str:
    if complete:
        return "100%"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):+.2f}%"


def _pct_of(value: float, reference: float) -> float | None:
    return None if not reference else 100.0 * (value / reference - 1.0)


def _int(value) -> str:
    return f"{int(value):,}"


def _megabytes(size_bytes) -> str:
    return f"{int(size_bytes) / 1e6:,.2f} MB"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))


def _datasets_of(per_model: dict[str, dict]) -> list[str]:
    """Datasets in first-seen order across models."""
    return list(dict.fromkeys(ds for per_ds in per_model.values() for ds in per_ds))


# ----------------------------------------------------------------------------- the run's facts


@dataclass
class _Run:
    """What every section needs: shape, orders, chosen models and model ordering."""

    summary: Summary
    n_layers: int
    n_heads: int
    orders: list[str]
    random_orders: set[str]
    chosen: dict[str, ChosenModel]
    generalization: dict[str, dict[str, DatasetScores]]
    significance: list[Significance]
    random_means: dict[str, RandomMean]
    figures: dict[str, Path] = field(default_factory=dict)

    @property
    def total_heads(self) -> int:
        return self.n_layers * self.n_heads

    def model_key(self, name: str) -> tuple:
        """Dissertation order: by strategy (H1, H2, H3), the random-order mean, then each order; CM last."""
        if name == COMPLETE:
            return (len(STRATEGIES) + 1, 0, "")
        info = self.chosen.get(name)
        strategy = (info.strategy if info else None) or _strategy_of_name(name)
        s = STRATEGIES.index(strategy) if strategy in STRATEGIES else len(STRATEGIES)
        if name.startswith("MAM"):
            return (s, 0, name)
        order = info.order if info else None
        o = self.orders.index(order) + 1 if order in self.orders else len(self.orders) + 1
        return (s, o, name)

    def sort(self, names) -> list[str]:
        return sorted(names, key=self.model_key)

    def complete(self, key: str) -> int | None:
        """The complete model's "n_params" or "size_bytes": measured with its scores, else the run's model's."""
        cm = self.chosen.get(COMPLETE)
        return (getattr(cm, key) if cm else None) or getattr(self.summary.model, key)

    def pruned_set(self, name: str) -> set[tuple[int, int]]:
        info = self.chosen.get(name)
        return set(info.pruned_heads) if info else set()


def _strategy_of_name(name: str) -> str | None:
    match = re.search(r"(H\d)$", name)
    return match.group(1) if match else None


def _facts(summary: Summary) -> _Run:
    orders = summary.orders or {}
    generalization = summary.generalization
    return _Run(
        summary=summary,
        n_layers=summary.model.n_layers,
        n_heads=summary.model.n_heads,
        orders=list(orders),
        random_orders={name for name, order in orders.items() if order.is_random},
        chosen=summary.chosen or {},
        generalization=generalization.models if generalization else {},
        significance=generalization.significance if generalization else [],
        random_means=summary.random_means or {},
    )


# ----------------------------------------------------------------------------- figures


def _figure(width: float, height: float):
    # The object-oriented API draws with Agg without touching pyplot's global backend state.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(run: _Run, fig, directory: Path, name: str) -> str:
    path = directory / f"{_slug(name)}.png"
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    run.figures[path.name] = path
    return path.name


def rank_matrix(ranked: list, n_layers: int, n_heads: int) -> list[list[int | None]]:
    """(layers x heads) rank of every head in an order: 0 = most important (first in `ranked`)."""
    ranks: list[list[int | None]] = [[None] * n_heads for _ in range(n_layers)]
    for rank, (layer, head) in enumerate(ranked):
        if 0 <= int(layer) < n_layers and 0 <= int(head) < n_heads:
            ranks[int(layer)][int(head)] = rank
    return ranks


def _importance_figure(run: _Run, name: str, ranked: list, directory: Path) -> str:
    import numpy as np

    ranks = rank_matrix(ranked, run.n_layers, run.n_heads)
    values = np.array([[np.nan if r is None else r for r in row] for row in ranks], dtype=float)
    fig = _figure(max(5.0, 1.5 + 0.55 * run.n_heads), 1.4 + 0.45 * run.n_layers)
    ax = fig.add_subplot()
    # Stronger colour = more important (rank 0): blue for the gradient order, orange for random ones.
    cmap = "Oranges_r" if name in run.random_orders else "Blues_r"
    image = ax.imshow(values, cmap=cmap, vmin=0, vmax=max(run.total_heads - 1, 1), aspect="auto")
    size = max(5.0, min(10.0, 110.0 / max(run.n_heads, run.n_layers)))
    for layer in range(run.n_layers):
        for head in range(run.n_heads):
            rank = ranks[layer][head]
            if rank is not None:
                dark = rank < 0.45 * run.total_heads
                ax.text(
                    head, layer, str(rank), ha="center", va="center", fontsize=size, color="white" if dark else "black"
                )
    _head_axes(ax, run)
    kind = "random order" if name in run.random_orders else "importance order"
    ax.set_title(f"{name}: {kind}\n(0 = most important, pruned last)", fontsize=10)
    fig.colorbar(image, ax=ax, label="rank")
    return _save(run, fig, directory, f"importance_{name}")


def _head_axes(ax, run: _Run) -> None:
    ax.set_xticks(range(run.n_heads))
    ax.set_yticks(range(run.n_layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.tick_params(labelsize=8)


def _draw_head_map(ax, run: _Run, pruned: set[tuple[int, int]], title: str, highlight: bool = False) -> None:
    """Kept heads filled, pruned heads pale, a layer that lost every head hatched and labelled."""
    import numpy as np
    from matplotlib.colors import ListedColormap

    removed = [layer for layer in range(run.n_layers) if all((layer, h) in pruned for h in range(run.n_heads))]
    grid = np.ones((run.n_layers, run.n_heads))
    for layer, head in pruned:
        if 0 <= layer < run.n_layers and 0 <= head < run.n_heads:
            grid[layer, head] = 0
    for layer in removed:
        grid[layer, :] = 2
    ax.imshow(grid, cmap=ListedColormap([_PRUNED, _KEPT, _REMOVED]), vmin=0, vmax=2, aspect="auto")
    for layer in removed:
        ax.add_patch(
            _rectangle((-0.5, layer - 0.5), run.n_heads, 1, hatch="///", fill=False, edgecolor="#c53030", linewidth=0)
        )
        ax.text(
            (run.n_heads - 1) / 2,
            layer,
            "layer removed",
            ha="center",
            va="center",
            fontsize=8,
            color="#9b2c2c",
            fontweight="bold",
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},
        )
    ax.set_xticks(np.arange(-0.5, run.n_heads, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, run.n_layers, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    _head_axes(ax, run)
    n = len(pruned)
    ax.set_title(
        f"{title}\n{n} of {run.total_heads} heads pruned",
        fontsize=10,
        color=_HIGHLIGHT if highlight else "black",
        fontweight="bold" if highlight else "normal",
    )
    if highlight:
        for spine in ax.spines.values():
            spine.set_edgecolor(_HIGHLIGHT)
            spine.set_linewidth(3)


def _rectangle(xy, width, height, **kwargs):
    from matplotlib.patches import Rectangle

    return Rectangle(xy, width, height, **kwargs)


def _head_maps_figure(run: _Run, panels: list[tuple[str, set, bool]], name: str, directory: Path) -> str:
    """One panel per model: (title, pruned heads, highlighted)."""
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    width = columns * (1.2 + 0.4 * run.n_heads) + 0.5
    height = rows * (1.2 + 0.32 * run.n_layers) + 0.6
    fig = _figure(width, height)
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, (title, pruned, highlight) in zip(axes.flat, panels):
        _draw_head_map(ax, run, pruned, title, highlight)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.legend(handles=_legend_handles(), loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return _save(run, fig, directory, name)


def _legend_handles():
    from matplotlib.patches import Patch

    return [
        Patch(facecolor=_KEPT, label="kept head"),
        Patch(facecolor=_PRUNED, label="pruned head"),
        Patch(facecolor=_REMOVED, hatch="///", edgecolor="#c53030", label="layer removed"),
    ]


def _h1_figure(run: _Run, order: str, entry: H1Result, directory: Path) -> str:
    fig = _figure(8.5, 4.6)
    ax = fig.add_subplot()
    for ds, by_k in entry.scores.items():
        _plot_curve(ax, by_k, ds)
    chosen = entry.chosen_k
    ax.axvline(int(chosen), color=_HIGHLIGHT, linestyle="--", linewidth=1.5, label=f"chosen k = {chosen}")
    _h1_axes(fig, ax, f"number of heads pruned (k, least important first in {order})",
             f"H1 with order {order}: F1 of the model with the k least important heads pruned")
    return _save(run, fig, directory, f"h1_{order}")


def _plot_curve(ax, by_k: dict[str, float], label: str, linestyle: str = "-") -> None:
    """One H1 curve, {str(k): mean F1}, as F1 x100 against k."""
    points = sorted((int(k), 100 * float(v)) for k, v in by_k.items())
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 40 else None,
                linewidth=1.3, linestyle=linestyle, label=label)


def _h1_axes(fig, ax, xlabel: str, title: str) -> None:
    """The labels, grid, title and legend of a figure of H1 curves."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("F1-macro (%)")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.legend(loc="outside right upper", fontsize=8)


# ----------------------------------------------------------------------------- sections


@dataclass
class _Section:
    id: str
    title: str
    blocks: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)


def _img(run: _Run, filename: str, caption: str) -> str:
    data = base64.b64encode(run.figures[filename].read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}" '
        f'data-file="figures/{html.escape(filename)}"><figcaption>{html.escape(caption)}</figcaption></figure>'
    )


def _add_table(section: _Section, table: Table) -> None:
    section.tables.append(table)
    section.blocks.append(table.html())


def _overview_section(run: _Run) -> _Section | None:
    if not run.chosen:
        return None
    section = _Section("overview", "Chosen models at a glance")
    datasets = _datasets_of(run.generalization)
    cm = run.generalization.get(COMPLETE, {})
    complete_params = run.complete("n_params")
    rows = []
    for name in run.sort(run.chosen):
        info = run.chosen[name]
        n = info.n_pruned
        params = info.n_params
        params_text = "n/a" if params is None else _int(params)
        if params is not None and complete_params and name != COMPLETE:
            params_text += f" ({_pct(_pct_of(params, complete_params))})"
        per_ds = run.generalization.get(name, {})
        common = [ds for ds in datasets if ds in per_ds and ds in cm]
        if common:
            mean = sum(per_ds[ds].mean for ds in common) / len(common)
            ref = sum(cm[ds].mean for ds in common) / len(common)
            f1_text = _f1(mean) + ("" if name == COMPLETE else f" ({_pct(_pct_of(mean, ref))})")
            wins = sum(per_ds[ds].mean > cm[ds].mean for ds in common)
            wins_text = "" if name == COMPLETE else f"{wins} of {len(common)}"
        else:
            f1_text, wins_text = "n/a", ""
        rows.append(
            _cells(
                [
                    name,
                    info.strategy or "-",
                    info.order or "-",
                    f"{n} ({100 * n / run.total_heads:.2f}%)",
                    params_text,
                    f1_text,
                    wins_text,
                ]
            )
        )
    _add_table(
        section,
        Table(
            "table-overview",
            "Chosen models: heads pruned, parameters and mean F1-macro over the generalization datasets",
            ["Model", "Strategy", "Order", "Heads pruned", "Parameters", "Mean F1 (vs CM)", "Datasets better than CM"],
            rows,
        ),
    )
    return section


def _importance_section(run: _Run, directory: Path) -> _Section | None:
    orders = run.summary.orders or {}
    section = _Section("importance", "Importance order of the heads (Fig. 2)")
    section.blocks.append(
        '<p class="note">Rank of each head in each order: 0 is the most important head, pruned last; '
        "the highest rank is pruned first. Layer 0 is the bottom layer.</p>"
    )
    for name, order in orders.items():
        if order.ranked:
            filename = _importance_figure(run, name, order.ranked, directory)
            section.blocks.append(_img(run, filename, f"Importance order {name}: rank of every head"))
    return section if len(section.blocks) > 1 else None


def _architectures_section(run: _Run, directory: Path) -> _Section | None:
    groups: dict[str, list[str]] = {}
    for name in run.sort(run.chosen):
        if name != COMPLETE:
            groups.setdefault(run.chosen[name].strategy or "other", []).append(name)
    if not groups:
        return None
    section = _Section("architectures", "Heads kept by each chosen model (Figs. 3, 6, 7)")
    for strategy, names in groups.items():
        panels = [(name, run.pruned_set(name), False) for name in names]
        filename = _head_maps_figure(run, panels, f"architectures_{strategy}", directory)
        section.blocks.append(_img(run, filename, f"Chosen models of {strategy}: {', '.join(names)}"))
    return section


def _h1_section(run: _Run, directory: Path) -> _Section | None:
    h1 = run.summary.h1 or {}
    if not h1:
        return None
    section = _Section("h1", "H1: pruning the k least important heads (Tables 5, 6)")
    best_rows = []
    for order, entry in h1.items():
        section.blocks.append(f'<h3 id="h1-{_slug(order)}">Order {html.escape(order)}</h3>')
        if entry.scores:
            filename = _h1_figure(run, order, entry, directory)
            section.blocks.append(_img(run, filename, f"H1 with {order}: F1-macro against heads pruned"))
        top = entry.ranking[:5]
        if top:
            datasets = list(top[0].scores or entry.scores)
            columns = ["Dataset"] + [str(row.n_pruned) for row in top]
            rows = []
            for ds in datasets:
                rows.append([Cell(ds)] + [Cell(_f1(_h1_score(entry, row, ds))) for row in top])
            rows.append([Cell("Rank Sum")] + [Cell(f"{float(row.rank_sum):.1f}") for row in top])
            rows.append([Cell("Rank Pos.")] + [Cell(str(i + 1)) for i in range(len(top))])
            for row in rows:
                for i, r in enumerate(top):
                    row[i + 1].bold = _k_of(r) == entry.chosen_k
            _add_table(
                section,
                Table(
                    f"table-h1-top5-{_slug(order)}",
                    f"Top {len(top)} models pruned according to H1, using {order} (columns: heads pruned; "
                    "F1-macro x100; the lower the rank sum, the better)",
                    columns,
                    rows,
                    note=entry.departure or "",
                ),
            )
        best_rows.append(_cells([order, str(entry.chosen_k), f"{100 * entry.chosen_k / run.total_heads:.2f}%"]))
    if best_rows:
        _add_table(
            section,
            Table(
                "table-h1-best-k",
                "Best amount of pruned heads per order of importance according to H1 (Table 6)",
                ["Order of importance", "Best amount of pruning", "Share of heads"],
                best_rows,
            ),
        )
    return section


def _orders_figure(run: _Run, dataset: str, h1: dict[str, H1Result], band: tuple[float, float] | None,
                   directory: Path) -> str:
    """The H1 curves of every order on one dataset, with the complete model's band (mean +- std)."""
    fig = _figure(8.5, 4.6)
    ax = fig.add_subplot()
    for order, entry in h1.items():
        _plot_curve(ax, entry.scores.get(dataset, {}), order, "--" if order in run.random_orders else "-")
    if band is not None:
        mean, std = band
        ax.axhspan(100 * (mean - std), 100 * (mean + std), color="#a0aec0", alpha=0.3,
                   label="complete model, mean +- std over seeds")
        ax.axhline(100 * mean, color="#4a5568", linewidth=1.0)
    _h1_axes(fig, ax, "number of heads pruned (k, least important first in each order)",
             f"H1 on {dataset}: every order (dashed: random orders)")
    return _save(run, fig, directory, f"orders_{dataset}")


def _complete_scores(run: _Run, h1: dict[str, H1Result]) -> dict[str, list[float | None]]:
    """The complete model's per-seed F1 on each Step 2 dataset: from the G2 comparison (Tables 7-10),
    else from H1's k = 0 (the complete model in every order)."""
    out: dict[str, list[float | None]] = {}
    comparison = run.summary.step2_comparison
    if comparison is not None and COMPLETE in comparison.models:
        out.update({ds: list(cell.scores) for ds, cell in comparison.models[COMPLETE].items()})
    for entry in h1.values():
        for ds, per_k in (entry.seed_scores or {}).items():
            if "0" in per_k:
                out.setdefault(ds, list(per_k["0"]))
    return out


def _stability_cells(run: _Run, order: str) -> list[str]:
    """Spearman between seeds, between datasets (each with its within-layer mean) and the bootstrap
    agreement (mean over k) of an order, or why it has none."""
    entry = (run.summary.orders or {}).get(order)
    stability = entry.stability if entry else None
    if stability is None:
        return ["n/a", "n/a", "n/a"]
    if stability.note is not None:
        word = {"random": "nil (random)", "weights": "deterministic"}.get(entry.kind or "", "n/a")
        return [word, word, word]

    def pair(agreement) -> str:
        if agreement is None or agreement.pairs == 0:
            return "n/a (no pairs)"
        overall = "n/a" if agreement.spearman is None else f"{agreement.spearman:.2f}"
        inner = "n/a" if agreement.spearman_within_layers is None else f"{agreement.spearman_within_layers:.2f}"
        return f"{overall} ({inner})\n{agreement.pairs} pair{'' if agreement.pairs == 1 else 's'}"

    bottom = stability.bootstrap.bottom_k if stability.bootstrap else {}
    boot = f"{sum(b.agreement for b in bottom.values()) / len(bottom):.2f}" if bottom else "n/a"
    return [pair(stability.seeds), pair(stability.datasets), boot]


def _seeds_phrase(seeds: dict[str, int]) -> str:
    """How many seeds the comparison of the orders is over: one count, or one per dataset."""
    counts = sorted(set(seeds.values()))
    if not counts:
        return ""
    if len(counts) == 1:
        return f", over the {counts[0]} seed{'' if counts[0] == 1 else 's'} every one of those cells was scored with"
    return (", over the seeds every one of those cells was scored with ("
            + ", ".join(f"{ds}: {n}" for ds, n in seeds.items()) + ")")


def _orders_section(run: _Run, directory: Path) -> _Section | None:
    """Which order prunes best: every order's H1 curves on one plot per dataset with the complete
    model's band, the mean F1 over k, the safe k (non-inferior to the complete model at a margin),
    pairwise paired tests between orders (`curves.compare_orders`), the stability of each order
    beside its scores, and one sentence of answer."""
    h1 = run.summary.h1 or {}
    if len(h1) < 2:
        return None
    section = _Section("orders", "Which order prunes best")
    generalization = (run.summary.config or {}).get("generalization", {})
    alpha = float(generalization.get("alpha", 0.05))
    margin = float(generalization.get("safe_k_margin", DEFAULT_SAFE_K_MARGIN))
    complete = _complete_scores(run, h1)
    seeded = all(entry.seed_scores for entry in h1.values())
    curves = ({o: dict(e.seed_scores or {}) for o, e in h1.items()} if seeded else
              {o: {ds: {k: [v] for k, v in per_k.items()} for ds, per_k in e.scores.items()} for o, e in h1.items()})
    found = compare_orders(curves, complete if seeded else {}, {o: e.k_values for o, e in h1.items()}, alpha, margin)
    sentence = answer(found) if seeded else (
        f"{found['best']} has the highest mean F1 over k; this summary holds no per-seed H1 scores (a run "
        "before schema 4), so nothing is tested.")
    section.blocks.append(f"<p><b>Answer:</b> {html.escape(sentence)}</p>")
    randoms = [o for o, e in (run.summary.orders or {}).items() if e.is_random and o in h1]
    chance = against_chance(found, randoms, alpha) if seeded else None
    if chance is not None:
        section.blocks.append(f"<p><b>Against chance:</b> {html.escape(chance_sentence(chance))}</p>")
    elif seeded and randoms:
        section.blocks.append(f"<p><b>Against chance:</b> {len(randoms)} random order is no null distribution: "
                              "run two or more (ten or more for a useful test) to place the criteria among them.</p>")
    for ds in _datasets_of({o: e.scores for o, e in h1.items()}):
        scored = [s for s in complete.get(ds) or [] if s is not None]
        band = mean_and_std(scored) if scored else None
        filename = _orders_figure(run, ds, h1, band, directory)
        section.blocks.append(_img(run, filename, f"H1 on {ds}: F1-macro of every order against heads pruned"))
    datasets = _datasets_of({o: found["orders"][o]["area"] for o in h1})
    rows = []
    for order in sorted(h1, key=lambda o: -(found["orders"][o]["mean_area"] or 0.0)):
        result = found["orders"][order]
        entry = (run.summary.orders or {}).get(order)
        cells = [Cell(order, order == found["best"]), Cell(entry.kind if entry and entry.kind else "-"),
                 Cell(_f1(result["mean_area"]), order == found["best"])]
        for ds in datasets:
            safe = result["safe_k"].get(ds)
            cells.append(Cell(f"{_f1(result['area'].get(ds))}\nk = {safe}" if safe is not None
                              else _f1(result["area"].get(ds))))
        rows.append(cells + _cells(_stability_cells(run, order)))
    columns = (["Order", "Kind", "Mean F1 over k"]
               + [f"{ds}\nmean F1 over k;\nsafe k" for ds in datasets]
               + ["Spearman between seeds\n(within layers)", "Spearman between datasets\n(within layers)",
                  "Bootstrap agreement\n(mean over k)"])
    over = _seeds_phrase(found["seeds"]) if seeded else ""
    raced = any(entry.racing is not None for entry in h1.values())
    grids = {ds: sorted({k for e in h1.values() if ds in e.scores for k in e.k_values}) for ds in found["ks"]}
    fewer = {ds: ks for ds, ks in found["ks"].items() if ks != grids[ds]}
    note = (f"{sentence} Mean F1 over k: the area under the H1 curve divided by the k range (x100), over the "
            f"k values every order was scored at{over}, averaged over those seeds per dataset, then over the datasets"
            + (" (a race scores the candidates it drops with fewer seeds, every candidate with the first ones)"
               if raced else "")
            + ("; compared at fewer k than the grid's (a screened race scores the candidates it drops at the low "
               "fidelity with no full-fidelity seed): " + "; ".join(f"{ds}: k = {', '.join(map(str, ks))}"
                                                                   for ds, ks in fewer.items()) if fewer else "")
            + f"; per dataset, 'safe k' is the most heads pruned shown non-inferior to the complete model at a "
            f"margin of {100 * margin:g} F1 point{'' if margin == 0.01 else 's'}: one-sided paired t-tests (over every "
            f"seed the complete model was scored with) that F1 is above the complete model's minus the margin, at "
            f"{alpha}, in increasing k, stopping at the first k that fails (a fixed sequence: the family-wise error "
            "is at most alpha without a correction); a candidate a race dropped before those seeds ends the "
            "sequence, and no k is shown where the first fails. "
            "Stability of a Step 1 order: the mean Spearman correlation between the importance matrices of runs "
            "with different seeds (same dataset) and of different datasets (same seed), in brackets the mean "
            "over layers of the within-layer Spearman; bootstrap agreement: over resamples of the Step 1 runs, "
            "how often the order's k least important heads stay the k least important (1 = always), averaged "
            "over the k of H1. A random order has no signal by construction (nil); a weights order is "
            "computed from the checkpoint alone (deterministic)."
            + (" OI (Algorithm 2 as written) rests largely on each finetuning's first batch: the running sum is "
               "min-max normalised after every batch, so once the first batch has set the [0, 1] scale each later "
               "batch moves it by about its own size (raw |g| about 0.001-0.01); simulated at MiniLM's scale, the "
               "first batch carries about 0.95 of the matrix on irony and 0.05 on SemEval16. A different first "
               "batch per seed is a likely reason OI's order within a layer does not reproduce across seeds on "
               "small Step 1 sets." if "OI" in h1 else ""))
    _add_table(section, Table("table-orders", "Which order prunes best: mean F1-macro over k of every order "
                              "(best first), the safe k (non-inferior to CM at the margin), and the order's "
                              "stability",
                              columns, rows, note=note))
    if seeded:
        pair_rows = []
        for pair in found["pairs"]:
            p, adjusted = pair["p_value"], pair["p_holm"]
            verdict = "-"
            if not math.isnan(adjusted) and adjusted < alpha:
                better, worse = (pair["a"], pair["b"]) if pair["difference"] > 0 else (pair["b"], pair["a"])
                verdict = statement({"better": better, "worse": worse})
            pair_rows.append(_cells([pair["a"], pair["b"], f"{100 * pair['difference']:+.2f}", str(pair["n"]),
                                     "n/a" if math.isnan(p) else f"{p:.3g}",
                                     "n/a" if math.isnan(adjusted) else f"{adjusted:.3g}", verdict]))
        method = pairs_method(found)
        _add_table(section, Table(
            "table-orders-pairs", "Pairwise: mean F1 over k of two orders, paired over datasets",
            ["Order a", "Order b", "a - b (points)", "Datasets", "p (t-test)", "p (Holm)", "Significant"], pair_rows,
            note=f"{method[0].upper()}{method[1:]}. The dataset is the unit: a dataset's seeds share its data "
                 f"and how each order suits it, so they are not independent draws of an order's effect. "
                 f"{{x}} > {{y}}: x prunes significantly better than y at {alpha}."))
    return section


def _k_of(row: RankingRow) -> int:
    """An H1 row's k (rows without "k" name it by their heads pruned, which is the same number)."""
    return row.n_pruned if row.k is None else row.k


def _h1_score(entry: H1Result, row: RankingRow, ds: str) -> float | None:
    scores = row.scores or {}
    if ds in scores:
        return scores[ds]
    return entry.scores.get(ds, {}).get(str(_k_of(row)))


def _greedy_section(run: _Run, key: str, directory: Path) -> _Section | None:
    data: dict[str, GreedyResult] = run.summary.greedy(key)
    if not data:
        return None
    strategy = key.upper()
    rule = "the best score so far" if strategy == "H2" else "the complete model's score"
    figure_no = {"H2": "Fig. 4", "H3": "Fig. 5"}.get(strategy, "")
    section = _Section(key, f"{strategy}: one greedy model per dataset, cross-scored ({figure_no})")
    section.blocks.append(
        f'<p class="note">For each dataset, heads are tried from the least important; a head stays pruned when '
        f"the F1 is at least {rule}. Each resulting model is then scored on every dataset and ranked.</p>"
    )
    for order, entry in data.items():
        section.blocks.append(f'<h3 id="{key}-{_slug(order)}">Order {html.escape(order)}</h3>')
        per_dataset = entry.per_dataset
        chosen = entry.chosen
        if per_dataset:
            panels = [(f"model of {ds}", set(info.pruned_heads), ds == chosen) for ds, info in per_dataset.items()]
            filename = _head_maps_figure(run, panels, f"{key}_models_{order}", directory)
            section.blocks.append(
                _img(
                    run,
                    filename,
                    f"{strategy} with {order}: the model found on each dataset (orange frame: ranked best, {chosen})",
                )
            )
        cross = entry.cross
        if cross:
            eval_datasets = _datasets_of(cross)
            rows = []
            for source, scores in cross.items():
                n = per_dataset[source].n_pruned if source in per_dataset else None
                label = f"model of {source}" + (" (chosen)" if source == chosen else "")
                best = {ds: max(r.get(ds, -1) for r in cross.values()) for ds in eval_datasets}
                rows.append(
                    [Cell(label, source == chosen), Cell("n/a" if n is None else str(n))]
                    + [Cell(_f1(scores.get(ds)), scores.get(ds) == best[ds]) for ds in eval_datasets]
                )
            if entry.complete:
                rows.append(
                    [Cell("complete model (CM)"), Cell("0")]
                    + [Cell(_f1(entry.complete.get(ds))) for ds in eval_datasets]
                )
            _add_table(
                section,
                Table(
                    f"table-{key}-cross-{_slug(order)}",
                    f"{strategy} with {order}: F1-macro x100 of each dataset's model (rows) on every dataset (columns)",
                    ["Model", "Heads pruned"] + eval_datasets,
                    rows,
                    note=entry.departure or "",
                ),
            )
        ranking = entry.ranking
        if ranking:
            datasets = list(ranking[0].ranks)
            rows = [
                [
                    Cell(str(i + 1)),
                    Cell(f"model of {row.model}", row.model == chosen),
                    Cell(str(row.n_pruned)),
                    Cell(f"{float(row.rank_sum):.1f}"),
                ]
                + [Cell(f"{float(row.ranks[ds]):g}") for ds in datasets]
                for i, row in enumerate(ranking)
            ]
            _add_table(
                section,
                Table(
                    f"table-{key}-ranking-{_slug(order)}",
                    f"{strategy} with {order}: ranking of the models (rank per dataset, lowest rank sum wins)",
                    ["Pos.", "Model", "Heads pruned", "Rank sum"] + datasets,
                    rows,
                ),
            )
    return section


def _searches(run: _Run) -> list[tuple[str, str, H1Result | GreedyResult]]:
    """(strategy, order, entry) of every search of the run, H1 first."""
    summary = run.summary
    out: list[tuple[str, str, H1Result | GreedyResult]] = [("H1", o, e) for o, e in (summary.h1 or {}).items()]
    for key in ("h2", "h3"):
        out += [(key.upper(), o, e) for o, e in summary.greedy(key).items()]
    return out


def _racing_section(run: _Run) -> _Section | None:
    """Racing (step2.racing): per search the evaluations made against the full grid's, which
    candidates were dropped after how many seeds (with the test's p-value), and how many seeds the
    H2/H3 steps' sequential decisions used."""
    raced = [(strategy, order, entry) for strategy, order, entry in _searches(run) if entry.racing is not None]
    if not raced:
        return None
    racing = raced[0][2].racing
    section = _Section("racing", "Racing: the evaluations saved, the candidates dropped")
    section.blocks.append(
        f'<p class="note">Seeds were raced (confidence {racing.confidence:g}, first test after {racing.first_test} '
        "seeds; seed order " + ", ".join(map(str, racing.seeds)) + "). H1 and the cross-scoring of H2/H3: a "
        "candidate significantly worse than the best (Friedman and Conover's post-hoc test over (dataset, seed) "
        "rows; Wilcoxon for two) is dropped and keeps the mean of the seeds it had; only a survivor can be chosen. "
        f"H2/H3's steps: {WALK_TEST_WORDS.get(racing.walk_test, racing.walk_test)} decides as soon as it is "
        "clear, else every seed and the paper's rule."
        + (f" Compared candidates were first raced at the low fidelity ({racing.screen}: no adjusting step); only "
           "its survivors raced at the full fidelity." if racing.screen else "") + "</p>")
    rows = []
    for strategy, order, entry in raced:
        done, grid = entry.evaluations or 0, entry.grid_evaluations or 0
        decisions = entry.racing.decisions
        early = sum(1 for d in decisions if d.seeds < len(entry.racing.seeds))
        low = f" (+{entry.low_evaluations} without adjusting)" if entry.low_evaluations else ""
        rows.append(_cells([
            f"{strategy} {order}", f"{done}{low}", str(grid), f"{100 * done / grid:.1f}%" if grid else "n/a",
            str(len(entry.racing.eliminations)),
            f"{early} of {len(decisions)} ({sum(d.seeds for d in decisions) / len(decisions):.1f} seeds on average)"
            if decisions else "none",
            "yes: " + str(entry.racing.chosen_instead["model"]) if entry.racing.chosen_instead else "no",
        ]))
    _add_table(section, Table(
        "table-racing-evaluations", "Seed evaluations of each search, raced and in the full grid",
        ["Search", "Evaluations", "Full grid", "Share", "Candidates dropped", "Steps decided early",
         "Rank sum put a dropped candidate first"], rows))
    rows = []
    for strategy, order, entry in raced:
        for e in entry.racing.eliminations:
            where = "H1 grid" if strategy == "H1" else "cross-scoring"
            if e.fidelity:
                where += f", screen ({e.fidelity})"
            rows.append(_cells([f"{strategy} {order}", where, str(e.n_pruned), str(e.after_seeds),
                                f"{e.p_value:.2g}", e.test]))
    if rows:
        _add_table(section, Table(
            "table-racing-eliminations", "Candidates dropped by the race (heads pruned; after how many seeds)",
            ["Search", "Round", "Heads pruned", "After seeds", "p-value", "Test"], rows))
    return section


def _model_stats(run: _Run, name: str, source: Generalization | None = None
                 ) -> dict[str, DatasetScores] | dict[str, MeanScore]:
    """{dataset: scores with mean, std and pct_vs_cm} of a model in `source` (the G3 generalization
    check unless another is given). A summary written before the per-seed MAM models (schema 2)
    has the random-order means only in `random_means` (std across the orders)."""
    models = source.models if source is not None else run.generalization
    if name in models:
        return models[name]
    if source is not None:
        return {}
    mean = run.random_means.get(name)
    return mean.datasets if mean else {}


def _comparison_table(run: _Run, table_id: str, title: str, models: list[str],
                      source: Generalization | None = None) -> Table | None:
    """Per dataset, mean (std) and % vs CM of each model present, and the significant t-tests among them.

    `title` may hold "{models}": the models actually shown."""
    models = [m for m in models if _model_stats(run, m, source)]
    if len(models) < 2:
        return None
    note = (
        "F1-macro x100: mean (standard deviation) over the seeds, then the change vs CM. Best per dataset "
        "in bold. t-test: paired by seed, p < 0.05; {x} > {y} means x is significantly better than y."
    )
    if any(m.startswith("MAM") for m in models):
        note += (" MAM<strategy>: per seed, the mean of that strategy's models over the random orders "
                 "(its std is over the seeds).")
    stats = {m: _model_stats(run, m, source) for m in models}
    significant = source.significance if source is not None else run.significance
    datasets = [ds for ds in _datasets_of(stats)]
    rows = []
    for ds in datasets:
        means = {m: stats[m][ds].mean for m in models if ds in stats[m]}
        best = max(means.values()) if means else None
        row = [Cell(ds)]
        for m in models:
            value = stats[m].get(ds)
            if value is None:
                row.append(Cell("n/a"))
                continue
            text = f"{_f1(value.mean)} ({_f1(value.std)})\n{_pct(value.pct_vs_cm, m == COMPLETE)}"
            row.append(Cell(text, value.mean == best))
        statements = [
            f"{statement(s.to_json())} (p = {float(s.p_value):.3g})"
            for s in significant
            if s.dataset == ds and s.better in models and s.worse in models
        ]
        row.append(Cell("\n".join(statements) or "-"))
        rows.append(row)
    columns = ["Dataset"] + [f"{m}\nmean (std), vs CM" for m in models] + ["t-test"]
    return Table(table_id, title.format(models=", ".join(models)), columns, rows, note=note)


def _own_models(run: _Run) -> dict[str, list[str]]:
    """Per strategy, the chosen models of the importance orders (not the random ones)."""
    return {
        s: [n for n in run.sort(run.chosen)
            if run.chosen[n].strategy == s and run.chosen[n].order not in run.random_orders]
        for s in STRATEGIES
    }


def _step2_comparison_section(run: _Run) -> _Section | None:
    """Tables 7-10: CM, MOI<strategy> and MAM<strategy> on the Step 2 datasets (G2), Step 2 seeds."""
    source = run.summary.step2_comparison
    if source is None:
        return None
    section = _Section("step2-comparison", "Step 2 datasets (G2): CM, the models of the importance orders and the "
                                           "random-order means (Tables 7-10)")
    seeds = (run.summary.config or {}).get("step2", {}).get("seeds")
    fresh = ("; the next section scores them on fresh seeds" if run.summary.step2_fresh_comparison is not None
             else "")
    if seeds:
        section.blocks.append(
            f'<p class="note">Seeds: {html.escape(str(seeds))}, the Step 2 selection seeds: the very seeds that '
            f"chose these models, as in the dissertation, so the comparison with CM is biased in the chosen "
            f"models' favour{fresh}.</p>")
    _add_g2_tables(run, section, source, "g2", "", "Table {number}")
    return section if section.tables else None


def _step2_fresh_section(run: _Run) -> _Section | None:
    """Tables 7-10's comparison again on the fresh seeds (`step2.fresh_seeds`), which chose nothing."""
    source = run.summary.step2_fresh_comparison
    if source is None:
        return None
    section = _Section("step2-fresh", "Step 2 datasets (G2) on fresh seeds: the same comparison, free of the "
                                      "selection's bias")
    seeds = ", ".join(map(str, run.summary.step2_fresh_seeds or []))
    section.blocks.append(
        f'<p class="note">Seeds: {html.escape(seeds)}, fresh seeds that no Step 2 selection used (step2.fresh_seeds). '
        "The chosen models are those of Tables 7-10, which were scored on the selection seeds that chose them; "
        "here a model significantly better than CM is so on data splits its choice never saw.</p>")
    _add_g2_tables(run, section, source, "g2-fresh", ", fresh seeds", "as Table {number}")
    return section if section.tables else None


def _add_g2_tables(run: _Run, section: _Section, source: Generalization, slug: str, seeds: str, label: str) -> None:
    """Tables 7-10's layout from `source`: per strategy (7-9), then all strategies together (10)."""
    own = _own_models(run)
    for number, strategy in zip((7, 8, 9), STRATEGIES):
        table = _comparison_table(run, f"table-{slug}-{strategy.lower()}",
                                  f"{strategy} on G2{seeds}: {{models}} ({label.format(number=number)})",
                                  [f"MAM{strategy}"] + own[strategy] + [COMPLETE], source)
        if table and own[strategy]:
            _add_table(section, table)
    together = [m for s in STRATEGIES for m in [f"MAM{s}"] + own[s]] + [COMPLETE]
    table = _comparison_table(run, f"table-{slug}-all",
                              f"All strategies on G2{seeds}: {{models}} ({label.format(number=10)})", together, source)
    if table:
        _add_table(section, table)


def _comparison_section(run: _Run) -> _Section | None:
    if not run.generalization:
        return None
    section = _Section("comparison", "Generalization check (G3): F1-macro per dataset (Tables 12, 15)")
    seeds = run.summary.generalization_seeds
    if seeds:
        section.blocks.append(f'<p class="note">Seeds: {html.escape(", ".join(map(str, seeds)))}.</p>')
    own = _own_models(run)
    together = [m for s in STRATEGIES for m in [f"MAM{s}"] + own[s]] + [COMPLETE]
    table = _comparison_table(run, "table-comparison-all", "All strategies on G3: {models} (Table 12)", together)
    if table:
        _add_table(section, table)
    individual = [m for m in run.sort(run.generalization) if m != COMPLETE and not m.startswith("MAM")] + [COMPLETE]
    table = _comparison_table(
        run,
        "table-comparison-individual",
        "Every chosen model individually on G3, random orders included (Table 15)",
        individual,
    )
    if table:
        _add_table(section, table)
    return section if section.tables else None


def _heads_pruned_section(run: _Run) -> _Section | None:
    pruned = {n: info for n, info in run.chosen.items() if n != COMPLETE}
    if not pruned:
        return None
    section = _Section("heads-pruned", "Number of heads pruned per model (Table 11)")
    count = {n: info.n_pruned for n, info in pruned.items()}
    rows = [
        _cells([n, f"{count[n]} ({100 * count[n] / run.total_heads:.2f}%)", _removed_layers_text(run, n)])
        for n in sorted(count, key=lambda n: (-count[n], run.model_key(n)))
    ]
    for name, value in run.random_means.items():
        if value.n_pruned is not None:
            n = float(value.n_pruned)
            rows.append(
                _cells([f"{name} (mean over random orders)", f"{n:.1f} ({100 * n / run.total_heads:.2f}%)", ""])
            )
    _add_table(
        section,
        Table(
            "table-heads-pruned",
            f"Number of heads pruned per model, of {run.total_heads} (Table 11)",
            ["Model", "Number of pruned heads", "Layers removed"],
            rows,
        ),
    )
    return section


def _removed_layers_text(run: _Run, name: str) -> str:
    pruned = run.pruned_set(name)
    removed = [str(l) for l in range(run.n_layers) if all((l, h) in pruned for h in range(run.n_heads))]
    return ", ".join(removed) or "-"


def _size_section(run: _Run) -> _Section | None:
    models = [n for n in run.sort(run.chosen) if run.chosen[n].n_params or run.chosen[n].size_bytes]
    if not models:
        return None
    section = _Section("size", "Parameters and saved size per model (Table 13)")
    ref_params, ref_size = run.complete("n_params"), run.complete("size_bytes")
    order = ([COMPLETE] if COMPLETE in models else []) + [m for m in models if m != COMPLETE]
    inference = run.summary.inference or {}
    with_speed = next((inference[m] for m in order if inference.get(m)), None)
    rows = []
    for name in order:
        info = run.chosen[name]
        cells = [name]
        for value, ref, fmt in (
            (info.size_bytes, ref_size, _megabytes),
            (info.n_params, ref_params, _int),
        ):
            if value is None:
                cells.append("n/a")
            elif name == COMPLETE or not ref:
                cells.append(f"{fmt(value)} (100.00%)" if name == COMPLETE else fmt(value))
            else:
                cells.append(f"{fmt(value)} ({_pct(_pct_of(value, ref))})")
        rows.append(_cells(cells + _inference_cells(inference.get(name), with_speed)))
    columns = ["Model", "Saved size", "Number of parameters"]
    title = "Saved size (safetensors) and number of parameters, vs the complete model (Table 13)"
    if with_speed:
        columns += ["CPU batch 1, p50 (ms)", f"CPU batch {with_speed['batch_size']} (tweets/s)"]
        title = ("Saved size (safetensors), number of parameters and CPU inference of the encoder "
                 f"(PyTorch eager, {with_speed['threads']} thread(s); speed-up vs CM), vs the complete model "
                 "(Table 13)")
    _add_table(section, Table("table-size", title, columns, rows))
    return section


def _inference_cells(speed: dict | None, with_speed: dict | None) -> list[str]:
    """The encoder's measured CPU inference next to its size (with the speed-up vs CM)."""
    if not with_speed:
        return []
    if not speed:
        return ["n/a", "n/a"]
    return [f"{speed['p50_ms']:.2f} ({speed['p50_speedup']:.2f}x)",
            f"{speed['per_second']:.0f} ({speed['throughput_speedup']:.2f}x)"]


def _seconds_table(run: _Run, table_id: str, title: str, models: list[str], values) -> Table:
    """Per dataset and model, mean (std) seconds and (for the per-model times) the change vs CM."""
    datasets = _datasets_of({m: run.generalization[m] for m in models})
    rows = []
    for ds in datasets:
        row = [Cell(ds)]
        for m in models:
            cell = run.generalization[m].get(ds)
            seconds = values(cell) if cell is not None else None
            if not seconds:
                row.append(Cell("n/a"))
                continue
            mean, std = mean_and_std(seconds)
            pct = _pct(cell.adjust_pct_vs_cm, m == COMPLETE) if values is _alone else None
            row.append(Cell(f"{mean:.2f} ({std:.2f})" + (f"\n{pct}" if pct else "")))
        rows.append(row)
    return Table(table_id, title, ["Dataset"] + models, rows)


def _alone(cell: DatasetScores) -> list[float] | None:
    return cell.adjust_seconds


def _stacked(cell: DatasetScores) -> list[float] | None:
    return cell.engine_adjust_seconds


def _adjust_time_section(run: _Run) -> _Section | None:
    """Table 14: what one finetuning of each model costs on the run's device (each model adjusting
    alone, physically pruned); the batched engine's per-model share of a stack apart, as throughput."""
    models = [m for m in run.sort(run.generalization) if m != COMPLETE and not m.startswith("MAM")] + [COMPLETE]
    models = [m for m in models if any(c.adjust_seconds for c in run.generalization.get(m, {}).values())]
    if not models:
        return None
    section = _Section("adjust-time", "Time of the adjusting step per dataset (Table 14)")
    cells = [c for m in models for c in run.generalization[m].values()]
    timed = next((c.adjust_seeds for c in cells if c.adjust_seeds), None)
    where = f" on {run.summary.device}" if run.summary.device else ""
    seeds = (f"timed apart on seeds {', '.join(map(str, timed))} (the scores came from the batched engine)"
             if timed else "over the seeds of the scores")
    _add_table(section, _seconds_table(
        run, "table-adjust-time",
        f"Mean (std) seconds of the adjusting stage (continued MLM, every epoch) of each model trained alone{where}, "
        f"{seeds}, "
        "and the change vs CM (Table 14)", models, _alone))
    if any(c.engine_adjust_seconds for c in cells):
        _add_table(section, _seconds_table(
            run, "table-adjust-throughput",
            "Batched engine: each model's share of its stack's wall time, mean (std) seconds over the seeds: "
            "a throughput (the seeds of a stack train together and share it), not what one finetuning costs",
            models, _stacked))
    return section


def _run_section(run: _Run) -> _Section:
    s = run.summary
    section = _Section("run", "Run: configuration, versions, device and date")
    model = s.model
    facts = [
        ("headprune version", s.headprune_version),
        ("date", s.date),
        ("device", s.device),
        ("model", model.name),
        ("model fingerprint", model.fingerprint),
        ("layers x heads", f"{run.n_layers} x {run.n_heads} = {run.total_heads} heads"),
        ("parameters", _int(model.n_params) if model.n_params is not None else None),
        ("saved size", _megabytes(model.size_bytes) if model.size_bytes is not None else None),
        ("G2 fresh seeds", ", ".join(map(str, s.step2_fresh_seeds or [])) or None),
        ("generalization seeds", ", ".join(map(str, s.generalization_seeds or [])) or None),
        ("elapsed", f"{float(s.elapsed_seconds) / 60:.1f} min" if s.elapsed_seconds is not None else None),
    ]
    facts += [(name, version) for name, version in (s.versions or {}).items()]
    rows = [_cells([k, str(v)]) for k, v in facts if v is not None]
    _add_table(section, Table("table-run", "Run facts and library versions", ["Item", "Value"], rows))
    config = s.config
    if config:
        section.blocks.append(
            "<h3>Configuration</h3><pre>"
            + html.escape(json.dumps(config, indent=2, sort_keys=True, default=str))
            + "</pre>"
        )
    return section


# ----------------------------------------------------------------------------- writing


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
        run = _facts(summary)
        builders = [
            lambda: _overview_section(run),
            lambda: _importance_section(run, figures),
            lambda: _architectures_section(run, figures),
            lambda: _h1_section(run, figures),
            lambda: _orders_section(run, figures),
            lambda: _greedy_section(run, "h2", figures),
            lambda: _greedy_section(run, "h3", figures),
            lambda: _racing_section(run),
            lambda: _step2_comparison_section(run),
            lambda: _step2_fresh_section(run),
            lambda: _comparison_section(run),
            lambda: _heads_pruned_section(run),
            lambda: _size_section(run),
            lambda: _adjust_time_section(run),
            lambda: _run_section(run),
        ]
        sections = [section for build in builders if (section := build()) is not None]
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise malformed(source, f"{type(err).__name__}: {err}") from None
    title = f"headprune report: {summary.model.name if summary.model.name is not None else 'model'}"
    (out / "report.html").write_text(_html_page(title, summary, sections), encoding="utf-8")
    tables = [f"# {title}\n"] + [t.markdown() for section in sections for t in section.tables]
    (out / "tables.md").write_text("\n".join(tables), encoding="utf-8")
    return out / "report.html"


def _html_page(title: str, summary: Summary, sections: list[_Section]) -> str:
    nav = "".join(f'<li><a href="#{s.id}">{html.escape(s.title)}</a></li>' for s in sections)
    body = "".join(
        f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>{"".join(s.blocks)}</section>' for s in sections
    )
    model = summary.model
    name = model.name if model.name is not None else ""
    subtitle = f"{html.escape(name)}: {model.n_layers} layers x {model.n_heads} heads" + (
        f" &middot; {html.escape(summary.date)}" if summary.date else ""
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f'<header><h1>{html.escape(title)}</h1><p class="note">{subtitle}</p><nav><ul>{nav}</ul></nav></header>'
        f"{body}</body></html>\n"
    )
