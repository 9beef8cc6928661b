"""The report's comparison tables: the chosen models, CM and the random-order means on the Step 2
datasets (Tables 7-10, on the selection seeds and on fresh seeds) and in the generalization check
(Tables 12, 15), with the paired t-tests the summary records."""

from __future__ import annotations

import html

from ..config import STRATEGIES
from ..generalize import statement
from ..names import COMPLETE, ModelName
from ..summary import DatasetScores, Generalization, MeanScore
from .facts import RunFacts, is_random_mean
from .tables import Cell, Section, Table, add_table, datasets_of, fmt_f1, fmt_pct


def _model_stats(run: RunFacts, name: str, source: Generalization | None = None
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


def _comparison_table(run: RunFacts, table_id: str, title: str, models: list[str],
                      source: Generalization | None = None) -> Table | None:
    """Per dataset, mean (std) and % vs CM of each model present, and the significant t-tests among them.

    `title` may hold "{models}": the models actually shown."""
    models = [m for m in models if _model_stats(run, m, source)]
    if len(models) < 2:
        return None
    note = (
        "F1-macro x100: mean (standard deviation) over the seeds, then the change vs CM. Best per dataset "
        f"in bold. t-test: paired by seed, p < {run.alpha:g}; {{x}} > {{y}} means x is significantly better than y."
    )
    if any(is_random_mean(m) for m in models):
        note += (" MAM<strategy>: per seed, the mean of that strategy's models over the random orders "
                 "(its std is over the seeds).")
    stats = {m: _model_stats(run, m, source) for m in models}
    significant = source.significance if source is not None else run.significance
    datasets = [ds for ds in datasets_of(stats)]
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
            text = f"{fmt_f1(value.mean)} ({fmt_f1(value.std)})\n{fmt_pct(value.pct_vs_cm, m == COMPLETE)}"
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


def _mam(strategy: str) -> str:
    return ModelName.mean_of_random(strategy).label


def _own_models(run: RunFacts) -> dict[str, list[str]]:
    """Per strategy, the chosen models of the importance orders (not the random ones)."""
    return {
        s: [n for n in run.sort(run.chosen)
            if run.chosen[n].strategy == s and run.chosen[n].order not in run.random_orders]
        for s in STRATEGIES
    }


def step2_comparison_section(run: RunFacts) -> Section | None:
    """Tables 7-10: CM, MOI<strategy> and MAM<strategy> on the Step 2 datasets (G2), Step 2 seeds."""
    source = run.summary.step2_comparison
    if source is None:
        return None
    section = Section("step2-comparison", "Step 2 datasets (G2): CM, the models of the importance orders and the "
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


def step2_fresh_section(run: RunFacts) -> Section | None:
    """Tables 7-10's comparison again on the fresh seeds (`step2.fresh_seeds`), which chose nothing."""
    source = run.summary.step2_fresh_comparison
    if source is None:
        return None
    section = Section("step2-fresh", "Step 2 datasets (G2) on fresh seeds: the same comparison, free of the "
                                      "selection's bias")
    seeds = ", ".join(map(str, run.summary.step2_fresh_seeds or []))
    section.blocks.append(
        f'<p class="note">Seeds: {html.escape(seeds)}, fresh seeds that no Step 2 selection used (step2.fresh_seeds). '
        "The chosen models are those of Tables 7-10, which were scored on the selection seeds that chose them; "
        "here a model significantly better than CM is so on data splits its choice never saw.</p>")
    _add_g2_tables(run, section, source, "g2-fresh", ", fresh seeds", "as Table {number}")
    return section if section.tables else None


def _add_g2_tables(run: RunFacts, section: Section, source: Generalization, slug: str, seeds: str, label: str) -> None:
    """Tables 7-10's layout from `source`: per strategy (7-9), then all strategies together (10)."""
    own = _own_models(run)
    for number, strategy in zip((7, 8, 9), STRATEGIES):
        table = _comparison_table(run, f"table-{slug}-{strategy.lower()}",
                                  f"{strategy} on G2{seeds}: {{models}} ({label.format(number=number)})",
                                  [_mam(strategy)] + own[strategy] + [COMPLETE], source)
        if table and own[strategy]:
            add_table(section, table)
    together = [m for s in STRATEGIES for m in [_mam(s)] + own[s]] + [COMPLETE]
    table = _comparison_table(run, f"table-{slug}-all",
                              f"All strategies on G2{seeds}: {{models}} ({label.format(number=10)})", together, source)
    if table:
        add_table(section, table)


def comparison_section(run: RunFacts) -> Section | None:
    if not run.generalization:
        return None
    section = Section("comparison", "Generalization check (G3): F1-macro per dataset (Tables 12, 15)")
    seeds = run.summary.generalization_seeds
    if seeds:
        section.blocks.append(f'<p class="note">Seeds: {html.escape(", ".join(map(str, seeds)))}.</p>')
    own = _own_models(run)
    together = [m for s in STRATEGIES for m in [_mam(s)] + own[s]] + [COMPLETE]
    table = _comparison_table(run, "table-comparison-all", "All strategies on G3: {models} (Table 12)", together)
    if table:
        add_table(section, table)
    individual = run.individual_models()
    table = _comparison_table(
        run,
        "table-comparison-individual",
        "Every chosen model individually on G3, random orders included (Table 15)",
        individual,
    )
    if table:
        add_table(section, table)
    return section if section.tables else None


__all__ = ["comparison_section", "step2_comparison_section", "step2_fresh_section"]
