"""The report's figures (matplotlib, Agg, no pyplot state): importance orders as rank maps (Fig. 2),
head maps of the chosen models (Figs. 3, 6, 7), H1 curves, every order's curves per dataset; each
saved as a PNG under report/figures/ and embedded in the page (`img`)."""

from __future__ import annotations

import base64
import html
import math

from ..summary import H1Result
from .facts import RunFacts
from .tables import slug

# Colours of the head maps: kept, pruned, layer removed; the best model's frame.
_KEPT, _PRUNED, _REMOVED, _HIGHLIGHT = "#2b6cb0", "#e2e8f0", "#fbd5d5", "#dd6b20"


def _figure(width: float, height: float):
    # The object-oriented API draws with Agg without touching pyplot's global backend state.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(run: RunFacts, fig, name: str) -> str:
    path = run.directory / f"{slug(name)}.png"
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


def importance_figure(run: RunFacts, name: str, ranked: list) -> str:
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
    return _save(run, fig, f"importance_{name}")


def _head_axes(ax, run: RunFacts) -> None:
    ax.set_xticks(range(run.n_heads))
    ax.set_yticks(range(run.n_layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.tick_params(labelsize=8)


def _draw_head_map(ax, run: RunFacts, pruned: set[tuple[int, int]], title: str, highlight: bool = False) -> None:
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


def head_maps_figure(run: RunFacts, panels: list[tuple[str, set, bool]], name: str) -> str:
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
    return _save(run, fig, name)


def _legend_handles():
    from matplotlib.patches import Patch

    return [
        Patch(facecolor=_KEPT, label="kept head"),
        Patch(facecolor=_PRUNED, label="pruned head"),
        Patch(facecolor=_REMOVED, hatch="///", edgecolor="#c53030", label="layer removed"),
    ]


def h1_figure(run: RunFacts, order: str, entry: H1Result) -> str:
    fig = _figure(8.5, 4.6)
    ax = fig.add_subplot()
    for ds, by_k in entry.scores.items():
        _plot_curve(ax, by_k, ds)
    chosen = entry.chosen_k
    ax.axvline(int(chosen), color=_HIGHLIGHT, linestyle="--", linewidth=1.5, label=f"chosen k = {chosen}")
    _h1_axes(fig, ax, f"number of heads pruned (k, least important first in {order})",
             f"H1 with order {order}: F1 of the model with the k least important heads pruned")
    return _save(run, fig, f"h1_{order}")


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


def orders_figure(run: RunFacts, dataset: str, h1: dict[str, H1Result], band: tuple[float, float] | None) -> str:
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
    return _save(run, fig, f"orders_{dataset}")


def img(run: RunFacts, filename: str, caption: str) -> str:
    data = base64.b64encode(run.figures[filename].read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}" '
        f'data-file="figures/{html.escape(filename)}"><figcaption>{html.escape(caption)}</figcaption></figure>'
    )


__all__ = ["h1_figure", "head_maps_figure", "img", "importance_figure", "orders_figure", "rank_matrix"]
