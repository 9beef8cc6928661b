"""The report's sections other than the comparisons: the chosen models at a glance, the importance
orders, the architectures, H1/H2/H3, racing, heads pruned, size and speed, adjusting time, the run.
Each takes the run's facts and returns a `Section`, or None where the
run has no such part."""

from __future__ import annotations

import html
import json

from ..names import COMPLETE
from ..racing import WALK_TEST_WORDS
from ..summary import DatasetScores, GreedyResult, H1Result, RankingRow, Summary
from .facts import RunFacts
from .figures import h1_figure, head_maps_figure, img, importance_figure
from .tables import (
    Cell,
    Section,
    Table,
    add_table,
    datasets_of,
    fmt_f1,
    fmt_int,
    fmt_megabytes,
    fmt_pct,
    pct_of,
    row_cells,
    slug,
)


def overview_section(run: RunFacts) -> Section | None:
    if not run.chosen:
        return None
    section = Section("overview", "Chosen models at a glance")
    complete_params = run.complete("n_params")
    rows = []
    for name in run.sort(run.chosen):
        info = run.chosen[name]
        n = info.n_pruned
        params = info.n_params
        params_text = "n/a" if params is None else fmt_int(params)
        if params is not None and complete_params and name != COMPLETE:
            params_text += f" ({fmt_pct(pct_of(params, complete_params))})"
        glance = (run.summary.overview or {}).get(name)
        if glance is not None:
            f1_text = fmt_f1(glance.mean) + ("" if name == COMPLETE else f" ({fmt_pct(glance.pct_vs_cm)})")
            wins_text = "" if name == COMPLETE else f"{glance.better_than_cm} of {glance.datasets}"
        else:
            f1_text, wins_text = "n/a", ""
        rows.append(
            row_cells(
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
    add_table(
        section,
        Table(
            "table-overview",
            "Chosen models: heads pruned, parameters and mean F1-macro over the generalization datasets",
            ["Model", "Strategy", "Order", "Heads pruned", "Parameters", "Mean F1 (vs CM)", "Datasets better than CM"],
            rows,
        ),
    )
    return section


def importance_section(run: RunFacts) -> Section | None:
    orders = run.summary.orders or {}
    section = Section("importance", "Importance order of the heads (Fig. 2)")
    section.blocks.append(
        '<p class="note">Rank of each head in each order: 0 is the most important head, pruned last; '
        "the highest rank is pruned first. Layer 0 is the bottom layer.</p>"
    )
    for name, order in orders.items():
        if order.ranked:
            filename = importance_figure(run, name, order.ranked)
            section.blocks.append(img(run, filename, f"Importance order {name}: rank of every head"))
    return section if len(section.blocks) > 1 else None


def architectures_section(run: RunFacts) -> Section | None:
    groups: dict[str, list[str]] = {}
    for name in run.sort(run.chosen):
        if name != COMPLETE:
            groups.setdefault(run.chosen[name].strategy or "other", []).append(name)
    if not groups:
        return None
    section = Section("architectures", "Heads kept by each chosen model (Figs. 3, 6, 7)")
    for strategy, names in groups.items():
        panels = [(name, run.pruned_set(name), False) for name in names]
        filename = head_maps_figure(run, panels, f"architectures_{strategy}")
        section.blocks.append(img(run, filename, f"Chosen models of {strategy}: {', '.join(names)}"))
    return section


def h1_section(run: RunFacts) -> Section | None:
    h1 = run.summary.h1 or {}
    if not h1:
        return None
    section = Section("h1", "H1: pruning the k least important heads (Tables 5, 6)")
    best_rows = []
    for order, entry in h1.items():
        section.blocks.append(f'<h3 id="h1-{slug(order)}">Order {html.escape(order)}</h3>')
        if entry.scores:
            filename = h1_figure(run, order, entry)
            section.blocks.append(img(run, filename, f"H1 with {order}: F1-macro against heads pruned"))
        top = entry.ranking[:5]
        if top:
            datasets = list(top[0].scores or entry.scores)
            columns = ["Dataset"] + [str(row.n_pruned) for row in top]
            rows = []
            for ds in datasets:
                rows.append([Cell(ds)] + [Cell(fmt_f1(_h1_score(entry, row, ds))) for row in top])
            rows.append([Cell("Rank Sum")] + [Cell(f"{float(row.rank_sum):.1f}") for row in top])
            rows.append([Cell("Rank Pos.")] + [Cell(str(i + 1)) for i in range(len(top))])
            for row in rows:
                for i, r in enumerate(top):
                    row[i + 1].bold = _k_of(r) == entry.chosen_k
            add_table(
                section,
                Table(
                    f"table-h1-top5-{slug(order)}",
                    f"Top {len(top)} models pruned according to H1, using {order} (columns: heads pruned; "
                    "F1-macro x100; the lower the rank sum, the better)",
                    columns,
                    rows,
                    note=entry.departure or "",
                ),
            )
        best_rows.append(row_cells([order, str(entry.chosen_k), f"{100 * entry.chosen_k / run.total_heads:.2f}%"]))
    if best_rows:
        add_table(
            section,
            Table(
                "table-h1-best-k",
                "Best amount of pruned heads per order of importance according to H1 (Table 6)",
                ["Order of importance", "Best amount of pruning", "Share of heads"],
                best_rows,
            ),
        )
    return section


def _k_of(row: RankingRow) -> int:
    """An H1 row's k (rows without "k" name it by their heads pruned, which is the same number)."""
    return row.n_pruned if row.k is None else row.k


def _h1_score(entry: H1Result, row: RankingRow, ds: str) -> float | None:
    scores = row.scores or {}
    if ds in scores:
        return scores[ds]
    return entry.scores.get(ds, {}).get(str(_k_of(row)))


def _greedy_section(run: RunFacts, key: str) -> Section | None:
    data: dict[str, GreedyResult] = run.summary.greedy(key)
    if not data:
        return None
    strategy = key.upper()
    rule = "the best score so far" if strategy == "H2" else "the complete model's score"
    figure_no = {"H2": "Fig. 4", "H3": "Fig. 5"}.get(strategy, "")
    section = Section(key, f"{strategy}: one greedy model per dataset, cross-scored ({figure_no})")
    section.blocks.append(
        f'<p class="note">For each dataset, heads are tried from the least important; a head stays pruned when '
        f"the F1 is at least {rule}. Each resulting model is then scored on every dataset and ranked.</p>"
    )
    for order, entry in data.items():
        section.blocks.append(f'<h3 id="{key}-{slug(order)}">Order {html.escape(order)}</h3>')
        per_dataset = entry.per_dataset
        chosen = entry.chosen
        if per_dataset:
            panels = [(f"model of {ds}", set(info.pruned_heads), ds == chosen) for ds, info in per_dataset.items()]
            filename = head_maps_figure(run, panels, f"{key}_models_{order}")
            section.blocks.append(
                img(
                    run,
                    filename,
                    f"{strategy} with {order}: the model found on each dataset (orange frame: ranked best, {chosen})",
                )
            )
        cross = entry.cross
        if cross:
            eval_datasets = datasets_of(cross)
            rows = []
            for source, scores in cross.items():
                n = per_dataset[source].n_pruned if source in per_dataset else None
                label = f"model of {source}" + (" (chosen)" if source == chosen else "")
                best = {ds: max(r.get(ds, -1) for r in cross.values()) for ds in eval_datasets}
                rows.append(
                    [Cell(label, source == chosen), Cell("n/a" if n is None else str(n))]
                    + [Cell(fmt_f1(scores.get(ds)), scores.get(ds) == best[ds]) for ds in eval_datasets]
                )
            if entry.complete:
                rows.append(
                    [Cell("complete model (CM)"), Cell("0")]
                    + [Cell(fmt_f1(entry.complete.get(ds))) for ds in eval_datasets]
                )
            add_table(
                section,
                Table(
                    f"table-{key}-cross-{slug(order)}",
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
            add_table(
                section,
                Table(
                    f"table-{key}-ranking-{slug(order)}",
                    f"{strategy} with {order}: ranking of the models (rank per dataset, lowest rank sum wins)",
                    ["Pos.", "Model", "Heads pruned", "Rank sum"] + datasets,
                    rows,
                ),
            )
    return section


def h2_section(run: RunFacts) -> Section | None:
    return _greedy_section(run, "h2")


def h3_section(run: RunFacts) -> Section | None:
    return _greedy_section(run, "h3")


def _searches(run: RunFacts) -> list[tuple[str, str, H1Result | GreedyResult]]:
    """(strategy, order, entry) of every search of the run, H1 first."""
    summary = run.summary
    out: list[tuple[str, str, H1Result | GreedyResult]] = [("H1", o, e) for o, e in (summary.h1 or {}).items()]
    for key in ("h2", "h3"):
        out += [(key.upper(), o, e) for o, e in summary.greedy(key).items()]
    return out


def racing_section(run: RunFacts) -> Section | None:
    """Racing (step2.racing): per search the evaluations made against the full grid's, which
    candidates were dropped after how many seeds (with the test's p-value), and how many seeds the
    H2/H3 steps' sequential decisions used."""
    raced = [(strategy, order, entry) for strategy, order, entry in _searches(run) if entry.racing is not None]
    if not raced:
        return None
    racing = raced[0][2].racing
    section = Section("racing", "Racing: the evaluations saved, the candidates dropped")
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
        rows.append(row_cells([
            f"{strategy} {order}", f"{done}{low}", str(grid), f"{100 * done / grid:.1f}%" if grid else "n/a",
            str(len(entry.racing.eliminations)),
            f"{early} of {len(decisions)} ({sum(d.seeds for d in decisions) / len(decisions):.1f} seeds on average)"
            if decisions else "none",
            "yes: " + str(entry.racing.chosen_instead["model"]) if entry.racing.chosen_instead else "no",
        ]))
    add_table(section, Table(
        "table-racing-evaluations", "Seed evaluations of each search, raced and in the full grid",
        ["Search", "Evaluations", "Full grid", "Share", "Candidates dropped", "Steps decided early",
         "Rank sum put a dropped candidate first"], rows))
    rows = []
    for strategy, order, entry in raced:
        for e in entry.racing.eliminations:
            where = "H1 grid" if strategy == "H1" else "cross-scoring"
            if e.fidelity:
                where += f", screen ({e.fidelity})"
            rows.append(row_cells([f"{strategy} {order}", where, str(e.n_pruned), str(e.after_seeds),
                                f"{e.p_value:.2g}", e.test]))
    if rows:
        add_table(section, Table(
            "table-racing-eliminations", "Candidates dropped by the race (heads pruned; after how many seeds)",
            ["Search", "Round", "Heads pruned", "After seeds", "p-value", "Test"], rows))
    return section


def heads_pruned_section(run: RunFacts) -> Section | None:
    pruned = {n: info for n, info in run.chosen.items() if n != COMPLETE}
    if not pruned:
        return None
    section = Section("heads-pruned", "Number of heads pruned per model (Table 11)")
    count = {n: info.n_pruned for n, info in pruned.items()}
    rows = [
        row_cells([n, f"{count[n]} ({100 * count[n] / run.total_heads:.2f}%)", _removed_layers_text(run, n)])
        for n in sorted(count, key=lambda n: (-count[n], run.model_key(n)))
    ]
    for name, value in run.random_means.items():
        if value.n_pruned is not None:
            n = float(value.n_pruned)
            rows.append(
                row_cells([f"{name} (mean over random orders)", f"{n:.1f} ({100 * n / run.total_heads:.2f}%)", ""])
            )
    add_table(
        section,
        Table(
            "table-heads-pruned",
            f"Number of heads pruned per model, of {run.total_heads} (Table 11)",
            ["Model", "Number of pruned heads", "Layers removed"],
            rows,
        ),
    )
    return section


def _removed_layers_text(run: RunFacts, name: str) -> str:
    pruned = run.pruned_set(name)
    removed = [str(l) for l in range(run.n_layers) if all((l, h) in pruned for h in range(run.n_heads))]
    return ", ".join(removed) or "-"


def size_section(run: RunFacts) -> Section | None:
    models = [n for n in run.sort(run.chosen) if run.chosen[n].n_params or run.chosen[n].size_bytes]
    if not models:
        return None
    section = Section("size", "Parameters and saved size per model (Table 13)")
    ref_params, ref_size = run.complete("n_params"), run.complete("size_bytes")
    order = ([COMPLETE] if COMPLETE in models else []) + [m for m in models if m != COMPLETE]
    inference = run.summary.inference or {}
    with_speed = next((inference[m] for m in order if inference.get(m)), None)
    rows = []
    for name in order:
        info = run.chosen[name]
        cells = [name]
        for value, ref, fmt in (
            (info.size_bytes, ref_size, fmt_megabytes),
            (info.n_params, ref_params, fmt_int),
        ):
            if value is None:
                cells.append("n/a")
            elif name == COMPLETE or not ref:
                cells.append(f"{fmt(value)} (100.00%)" if name == COMPLETE else fmt(value))
            else:
                cells.append(f"{fmt(value)} ({fmt_pct(pct_of(value, ref))})")
        rows.append(row_cells(cells + _inference_cells(inference.get(name), with_speed)))
    columns = ["Model", "Saved size", "Number of parameters"]
    title = "Saved size (safetensors) and number of parameters, vs the complete model (Table 13)"
    if with_speed:
        columns += ["CPU batch 1, p50 (ms)", f"CPU batch {with_speed['batch_size']} (tweets/s)"]
        title = ("Saved size (safetensors), number of parameters and CPU inference of the encoder "
                 f"(PyTorch eager, {with_speed['threads']} thread(s); speed-up vs CM), vs the complete model "
                 "(Table 13)")
    add_table(section, Table("table-size", title, columns, rows))
    return section


def _inference_cells(speed: dict | None, with_speed: dict | None) -> list[str]:
    """The encoder's measured CPU inference next to its size (with the speed-up vs CM)."""
    if not with_speed:
        return []
    if not speed:
        return ["n/a", "n/a"]
    return [f"{speed['p50_ms']:.2f} ({speed['p50_speedup']:.2f}x)",
            f"{speed['per_second']:.0f} ({speed['throughput_speedup']:.2f}x)"]


def _seconds_table(run: RunFacts, table_id: str, title: str, models: list[str], values) -> Table:
    """Per dataset and model, mean (std) seconds and (for the per-model times) the change vs CM."""
    datasets = datasets_of({m: run.generalization[m] for m in models})
    rows = []
    for ds in datasets:
        row = [Cell(ds)]
        for m in models:
            cell = run.generalization[m].get(ds)
            stats = values(cell) if cell is not None else None
            if stats is None:
                row.append(Cell("n/a"))
                continue
            mean, std = stats
            pct = fmt_pct(cell.adjust_pct_vs_cm, m == COMPLETE) if values is _alone else None
            row.append(Cell(f"{mean:.2f} ({std:.2f})" + (f"\n{pct}" if pct else "")))
        rows.append(row)
    return Table(table_id, title, ["Dataset"] + models, rows)


def _alone(cell: DatasetScores) -> tuple[float, float] | None:
    """Mean (std) seconds of one finetuning of the model alone (None where not timed)."""
    if not cell.adjust_seconds or cell.adjust_mean is None or cell.adjust_std is None:
        return None
    return cell.adjust_mean, cell.adjust_std


def _stacked(cell: DatasetScores) -> tuple[float, float] | None:
    """Mean (std) of the model's share of its stacks' wall time (None where the summary has none)."""
    if not cell.engine_adjust_seconds or cell.engine_adjust_mean is None or cell.engine_adjust_std is None:
        return None
    return cell.engine_adjust_mean, cell.engine_adjust_std


def adjust_time_section(run: RunFacts) -> Section | None:
    """Table 14: what one finetuning of each model costs on the run's device (each model adjusting
    alone, physically pruned); the batched engine's per-model share of a stack apart, as throughput."""
    models = run.individual_models()
    models = [m for m in models if any(c.adjust_seconds for c in run.generalization.get(m, {}).values())]
    if not models:
        return None
    section = Section("adjust-time", "Time of the adjusting step per dataset (Table 14)")
    cells = [c for m in models for c in run.generalization[m].values()]
    timed = next((c.adjust_seeds for c in cells if c.adjust_seeds), None)
    where = f" on {run.summary.device}" if run.summary.device else ""
    seeds = (f"timed apart on seeds {', '.join(map(str, timed))} (the scores came from the batched engine)"
             if timed else "over the seeds of the scores")
    add_table(section, _seconds_table(
        run, "table-adjust-time",
        f"Mean (std) seconds of the adjusting stage (continued MLM, every epoch) of each model trained alone{where}, "
        f"{seeds}, "
        "and the change vs CM (Table 14)", models, _alone))
    if any(c.engine_adjust_seconds for c in cells):
        add_table(section, _seconds_table(
            run, "table-adjust-throughput",
            "Batched engine: each model's share of its stack's wall time, mean (std) seconds over the seeds: "
            "a throughput (the seeds of a stack train together and share it), not what one finetuning costs",
            models, _stacked))
    return section


def budget_text(summary: Summary) -> str | None:
    """`headprune run --budget`: the budget, the profile it chose and whether its estimate fit (None without one)."""
    budget = summary.budget
    if not budget:
        return None
    fits = budget.get("fits")
    verdict = "" if fits is None else (", estimated to fit" if fits else ", the least faithful; estimated not to fit")
    return f"{budget.get('budget')}: profile {budget.get('profile')}{verdict}"


def run_section(run: RunFacts) -> Section:
    s = run.summary
    section = Section("run", "Run: configuration, versions, device and date")
    model = s.model
    facts = [
        ("headprune version", s.headprune_version),
        ("date", s.date),
        ("device", s.device),
        ("model", model.name),
        ("model fingerprint", model.fingerprint),
        ("layers x heads", f"{run.n_layers} x {run.n_heads} = {run.total_heads} heads"),
        ("parameters", fmt_int(model.n_params) if model.n_params is not None else None),
        ("saved size", fmt_megabytes(model.size_bytes) if model.size_bytes is not None else None),
        ("G2 fresh seeds", ", ".join(map(str, s.step2_fresh_seeds or [])) or None),
        ("generalization seeds", ", ".join(map(str, s.generalization_seeds or [])) or None),
        ("elapsed", f"{float(s.elapsed_seconds) / 60:.1f} min" if s.elapsed_seconds is not None else None),
        ("time budget", budget_text(s)),
    ]
    facts += [(name, version) for name, version in (s.versions or {}).items()]
    rows = [row_cells([k, str(v)]) for k, v in facts if v is not None]
    add_table(section, Table("table-run", "Run facts and library versions", ["Item", "Value"], rows))
    config = s.config
    if config:
        section.blocks.append(
            "<h3>Configuration</h3><pre>"
            + html.escape(json.dumps(config, indent=2, sort_keys=True, default=str))
            + "</pre>"
        )
    return section


__all__ = ["adjust_time_section", "architectures_section", "budget_text", "h1_section", "h2_section", "h3_section",
           "heads_pruned_section", "importance_section", "overview_section", "racing_section", "run_section",
           "size_section"]
