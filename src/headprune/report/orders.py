"""The report's "Which order prunes best": every order's H1 curves, the mean F1 over k, the safe k,
the pairwise tests, the criteria against the random orders and each order's stability, rendered
from `Summary.order_comparison` (computed by the pipeline, `analysis.order_comparison`)."""

from __future__ import annotations

import html
import math

from ..curves import answer, chance_sentence, pairs_method
from ..generalize import statement
from ..summary import OrderComparison
from .facts import RunFacts
from .figures import img, orders_figure
from .tables import Cell, Section, Table, add_table, datasets_of, fmt_f1, row_cells


def _stability_cells(run: RunFacts, order: str, comparison: OrderComparison) -> list[str]:
    """Spearman between seeds, between datasets (each with its within-layer mean) and the bootstrap
    agreement (mean over k, `OrderComparison.bootstrap_agreement`) of an order, or why it has none."""
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

    agreement = comparison.bootstrap_agreement.get(order)
    boot = "n/a" if agreement is None else f"{agreement:.2f}"
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


def orders_section(run: RunFacts) -> Section | None:
    """Which order prunes best: every order's H1 curves on one plot per dataset with the complete
    model's band, the mean F1 over k, the safe k (non-inferior to the complete model at a margin),
    pairwise paired tests between orders, the stability of each order beside its scores, and one
    sentence of answer; all read from `Summary.order_comparison`."""
    h1 = run.summary.h1 or {}
    if len(h1) < 2:
        return None
    section = Section("orders", "Which order prunes best")
    comparison = run.summary.order_comparison
    if comparison is None:
        section.blocks.append(
            '<p class="note">This summary holds no comparison of the orders (it was written before the run computed '
            "it, summary schema 7): the curves alone are shown. Running <code>headprune run</code> again with the "
            "same configuration and run directory writes it; the store answers every evaluation.</p>")
    else:
        section.blocks += _answer(comparison)
    for ds in datasets_of({o: e.scores for o, e in h1.items()}):
        band = comparison.complete.get(ds) if comparison is not None else None
        filename = orders_figure(run, ds, h1, None if band is None else (band.mean, band.std))
        section.blocks.append(img(run, filename, f"H1 on {ds}: F1-macro of every order against heads pruned"))
    if comparison is not None:
        _add_tables(run, section, comparison)
    return section


def _sentence(comparison: OrderComparison) -> str:
    """The one-sentence answer (`curves.answer`), or why a summary without per-seed scores tests nothing."""
    if comparison.seeded:
        return answer(comparison.as_curves())
    return (f"{comparison.best} has the highest mean F1 over k; this summary holds no per-seed H1 scores (a run "
            "before schema 4), so nothing is tested.")


def _answer(comparison: OrderComparison) -> list[str]:
    """The answer and the criteria against chance, above the figures."""
    blocks = [f"<p><b>Answer:</b> {html.escape(_sentence(comparison))}</p>"]
    randoms = comparison.random_orders
    if comparison.against_chance is not None:
        chance = chance_sentence(comparison.against_chance.as_curves())
        blocks.append(f"<p><b>Against chance:</b> {html.escape(chance)}</p>")
    elif comparison.seeded and randoms:
        blocks.append(f"<p><b>Against chance:</b> {len(randoms)} random order is no null distribution: "
                      "run two or more (ten or more for a useful test) to place the criteria among them.</p>")
    return blocks


def _add_tables(run: RunFacts, section: Section, comparison: OrderComparison) -> None:
    """The table of the orders (mean F1 over k, safe k, stability) and the pairwise tests."""
    h1 = run.summary.h1 or {}
    alpha, margin, seeded = comparison.alpha, comparison.margin, comparison.seeded
    found = comparison.as_curves()
    sentence = _sentence(comparison)
    datasets = datasets_of({o: found["orders"][o]["area"] for o in h1})
    rows = []
    for order in sorted(h1, key=lambda o: -(found["orders"][o]["mean_area"] or 0.0)):
        result = found["orders"][order]
        entry = (run.summary.orders or {}).get(order)
        row = [Cell(order, order == found["best"]), Cell(entry.kind if entry and entry.kind else "-"),
               Cell(fmt_f1(result["mean_area"]), order == found["best"])]
        for ds in datasets:
            safe = result["safe_k"].get(ds)
            row.append(Cell(f"{fmt_f1(result['area'].get(ds))}\nk = {safe}" if safe is not None
                            else fmt_f1(result["area"].get(ds))))
        rows.append(row + row_cells(_stability_cells(run, order, comparison)))
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
    add_table(section, Table("table-orders", "Which order prunes best: mean F1-macro over k of every order "
                              "(best first), the safe k (non-inferior to CM at the margin), and the order's "
                              "stability",
                              columns, rows, note=note))
    if not seeded:
        return
    pair_rows = []
    for pair in found["pairs"]:
        p, adjusted = pair["p_value"], pair["p_holm"]
        verdict = "-"
        if not math.isnan(adjusted) and adjusted < alpha:
            better, worse = (pair["a"], pair["b"]) if pair["difference"] > 0 else (pair["b"], pair["a"])
            verdict = statement({"better": better, "worse": worse})
        difference = "n/a" if pair["difference"] is None else f"{100 * pair['difference']:+.2f}"
        pair_rows.append(row_cells([pair["a"], pair["b"], difference, str(pair["n"]),
                                "n/a" if math.isnan(p) else f"{p:.3g}",
                                "n/a" if math.isnan(adjusted) else f"{adjusted:.3g}", verdict]))
    method = pairs_method(found)
    add_table(section, Table(
        "table-orders-pairs", "Pairwise: mean F1 over k of two orders, paired over datasets",
        ["Order a", "Order b", "a - b (points)", "Datasets", "p (t-test)", "p (Holm)", "Significant"], pair_rows,
        note=f"{method[0].upper()}{method[1:]}. The dataset is the unit: a dataset's seeds share its data "
             f"and how each order suits it, so they are not independent draws of an order's effect. "
             f"{{x}} > {{y}}: x prunes significantly better than y at {alpha}."))


__all__ = ["orders_section"]
