"""report.py: every section, figure and table of a synthetic but complete summary.json."""

from __future__ import annotations

import base64
import copy
import html
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from _tiny import G3, analysed, make_summary, write_summary
from headprune.errors import HeadpruneError
from headprune.report import rank_matrix, write_report
from headprune.summary import load_summary

SECTIONS = [
    "overview", "importance", "architectures", "h1", "orders", "h2", "h3", "step2-comparison", "comparison",
    "heads-pruned", "size", "adjust-time", "run",
]
FIGURES = {
    "importance_OI.png", "importance_A1.png", "architectures_H1.png", "architectures_H2.png",
    "architectures_H3.png", "h1_OI.png", "h1_A1.png", "h2_models_OI.png", "h2_models_A1.png",
    "h3_models_OI.png", "h3_models_A1.png", "orders_person.png", "orders_hobbit.png", "orders_movie.png",
}
TABLES = [
    "table-overview", "table-h1-top5-OI", "table-h1-top5-A1", "table-h1-best-k", "table-orders",
    *[f"table-{h}-{kind}-{order}" for h in ("h2", "h3") for order in ("OI", "A1") for kind in ("cross", "ranking")],
    "table-g2-h1", "table-g2-h2", "table-g2-h3", "table-g2-all", "table-comparison-all", "table-comparison-individual",
    "table-heads-pruned", "table-size", "table-adjust-time", "table-run",
]


class _Page(HTMLParser):
    """Collects element ids, <img> attributes, tags and every URL-bearing attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.images: list[dict] = []
        self.tags: set[str] = set()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "img":
            self.images.append(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.urls.append(attrs[key])


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, dict]:
    summary = make_summary(version=3)
    run_dir = tmp_path_factory.mktemp("run")
    write_summary(run_dir, analysed(summary))
    return write_report(run_dir), summary


@pytest.fixture(scope="module")
def page(rendered) -> _Page:
    parser = _Page()
    parser.feed(rendered[0].read_text(encoding="utf-8"))
    return parser


def test_writes_the_three_outputs(rendered):
    path, _ = rendered
    assert path.name == "report.html" and path.parent.name == "report"
    assert (path.parent / "tables.md").is_file()
    assert {p.name for p in (path.parent / "figures").glob("*.png")} == FIGURES


def test_every_section_has_its_id(page):
    for section in SECTIONS:
        assert section in page.ids, f"section id {section!r} missing"
    for table in TABLES:
        assert table in page.ids, f"table id {table!r} missing"
    assert len(page.ids) == len(set(page.ids)), "duplicate ids"


def test_every_figure_is_embedded_and_self_contained(rendered, page):
    path, _ = rendered
    embedded = {img["data-file"]: img["src"] for img in page.images}
    assert set(embedded) == {f"figures/{name}" for name in FIGURES}
    for name in FIGURES:
        data = (path.parent / "figures" / name).read_bytes()
        assert data.startswith(b"\x89PNG")
        assert embedded[f"figures/{name}"] == "data:image/png;base64," + base64.b64encode(data).decode()
    external = [u for u in page.urls if not u.startswith(("data:image/png;base64,", "#"))]
    assert external == []
    assert "script" not in page.tags and "link" not in page.tags
    assert not re.search(r"https?://", path.read_text(encoding="utf-8"))


def test_rank_matrix_zero_is_most_important():
    ranked = [[1, 1], [0, 0], [1, 0], [0, 1]]
    assert rank_matrix(ranked, 2, 2) == [[1, 3], [2, 0]]


def test_tables_md_holds_every_table_with_the_numbers(rendered):
    path, summary = rendered
    md = (path.parent / "tables.md").read_text(encoding="utf-8")
    assert md.count("\n## ") == len(TABLES)
    for needle in ("(Table 6)", "H1 on G2: MAMH1, MOIH1, CM (Table 7)", "H2 on G2: MAMH2, MOIH2, CM (Table 8)",
                   "H3 on G2: MAMH3, MOIH3, CM (Table 9)", "(Table 10)", "(Table 11)", "(Table 12)", "(Table 13)",
                   "(Table 14)", "(Table 15)", "Top 5 models pruned according to H1, using OI"):
        assert needle in md
    assert "Table 7/" not in md and "Tables 10, 12" not in md  # no G3 table carries a G2 table's number
    generalization = summary["generalization"]
    cm, moih1 = generalization["CM"]["aisopos"], generalization["MOIH1"]["aisopos"]
    html_text = path.read_text(encoding="utf-8")
    for text in (md, html_text):
        assert f"{100 * cm['mean']:.2f} ({100 * cm['std']:.2f})" in text
        assert f"{100 * moih1['mean']:.2f} ({100 * moih1['std']:.2f})" in text
        assert f"{moih1['pct_vs_cm']:+.2f}%" in text
        assert "{MOIH1} &gt; {CM} (p = 0.0123)" in text or "{MOIH1} > {CM} (p = 0.0123)" in text
        assert "{MA1H3} &gt; {MOIH3}" in text or "{MA1H3} > {MOIH3}" in text
        assert "{MOIH1} &gt; {CM} (p = 0.0321)" in text or "{MOIH1} > {CM} (p = 0.0321)" in text  # Table 7, G2
        assert "5 (62.50%)" in text  # Table 11: MOIH1 prunes 5 of 8 heads
        assert "990,000 (-1.00%)" in text  # Table 13: parameters vs CM
        for ds in G3:
            assert ds in text
    # Table 5: the top-5 H1 models of OI, the chosen k first, with its rank sum.
    top = re.search(r"## Top 5 models pruned according to H1, using OI.*?\n\n(.*?)\n\n", md, re.DOTALL).group(1)
    header = top.splitlines()[0]
    assert header.startswith("| Dataset | 5 |")
    assert "| Rank Sum | **1.5** |" in top
    person = summary["h1"]["OI"]["scores"]["person"]["5"]
    assert f"| person | **{100 * person:.2f}** |" in top
    # Table 6: best k per order.
    assert "| OI | 5 | 62.50% |" in md and "| A1 | 2 | 25.00% |" in md
    # Table 14: adjusting time vs CM.
    t = generalization["MOIH1"]["sanders"]
    assert f"{t['adjust_mean']:.2f} ({t['adjust_std']:.2f}) {t['adjust_pct_vs_cm']:+.2f}%" in md
    # The H2 cross-scoring matrix and its ranking.
    cross = summary["h2"]["OI"]["cross"]["movie"]["hobbit"]
    assert f"{100 * cross:.2f}" in md
    assert "| 1 | **model of hobbit** |" in md


def test_a_schema_1_summary_still_renders_its_random_order_means(tmp_path):
    """Before the per-seed MAM models, the random-order means were only in `random_means`: the G3
    comparison still shows them from there, and there is no G2 comparison to show."""
    write_summary(tmp_path, make_summary())
    md = (write_report(tmp_path).parent / "tables.md").read_text(encoding="utf-8")
    assert "All strategies on G3: MAMH1, MOIH1, MAMH2, MOIH2, MAMH3, MOIH3, CM (Table 12)" in md
    assert "(Table 7)" not in md


def test_table_14_times_each_model_alone_and_shows_the_engine_apart(tmp_path):
    """Scores from the batched engine: Table 14 shows the per-model times measured alone (and names
    their seeds); the stacks' shared times are a separate throughput table."""
    summary = make_summary(version=3)
    for name, row in summary["generalization"].items():
        if name != "significance":
            for cell in row.values():
                cell["adjust_seeds"] = [101, 102]
                cell["engine_adjust_seconds"] = [0.431, 0.431, 0.431]
                cell["engine_adjust_mean"], cell["engine_adjust_std"] = 0.431, 0.0  # the pipeline's (schema 7)
    write_summary(tmp_path, summary)
    md = (write_report(tmp_path).parent / "tables.md").read_text(encoding="utf-8")
    assert "timed apart on seeds 101, 102" in md and "(Table 14)" in md
    assert "## Batched engine: each model's share of its stack's wall time" in md and "0.43 (0.00)" in md


def test_table_13_shows_each_models_measured_inference_speed(tmp_path):
    summary = make_summary(version=3)
    summary["inference"] = {}
    for n, name in enumerate(summary["chosen"]):
        summary["inference"][name] = {
            "p50_ms": 10.0 - n, "p95_ms": 12.0, "per_second": 150.0 + 10 * n, "batch_size": 32,
            "latency_samples": 30, "throughput_samples": 5, "threads": 1, "device": "cpu", "load_average": 1.0,
            "p50_speedup": 10.0 / (10.0 - n), "throughput_speedup": (150.0 + 10 * n) / 150.0,
        }
    write_summary(tmp_path, summary)
    md = (write_report(tmp_path).parent / "tables.md").read_text(encoding="utf-8")
    assert "CPU inference of the encoder (PyTorch eager, 1 thread(s); speed-up vs CM)" in md
    assert "| CPU batch 1, p50 (ms) | CPU batch 32 (tweets/s) |" in md
    assert "| 10.00 (1.00x) | 150 (1.00x) |" in md  # CM
    assert "| 9.00 (1.11x) | 160 (1.07x) |" in md


def test_run_section_has_configuration_versions_device_date(page, rendered):
    text = rendered[0].read_text(encoding="utf-8")
    run = text[text.index('<section id="run">'):]
    for needle in ("2025-01-02T03:04:05+00:00", "cpu (test)", "transformers", "scikit-learn", "0123456789abcdef",
                   "generalization seeds", "101, 102, 103", "&quot;seeds&quot;"):
        assert needle in run


def test_removed_layer_is_named(rendered):
    md = (rendered[0].parent / "tables.md").read_text(encoding="utf-8")
    assert "| MOIH1 | 5 (62.50%) | 1 |" in md  # layer 1 removed whole


def test_missing_optional_parts_are_omitted(tmp_path):
    summary = make_summary()
    for key in ("h3", "generalization", "random_means", "generalization_seeds", "config", "versions"):
        del summary[key]
    summary["chosen"] = {k: v for k, v in summary["chosen"].items() if not k.endswith("H3")}
    write_summary(tmp_path, summary)
    parser = _Page()
    parser.feed(write_report(tmp_path).read_text(encoding="utf-8"))
    assert "h3" not in parser.ids and "comparison" not in parser.ids and "adjust-time" not in parser.ids
    assert {"importance", "architectures", "h1", "h2", "size", "run"} <= set(parser.ids)
    assert not (tmp_path / "report" / "figures" / "h3_models_OI.png").exists()


def test_minimal_summary_renders(tmp_path):
    write_summary(tmp_path, {"model": {"name": "m", "n_layers": 2, "n_heads": 2}})
    parser = _Page()
    parser.feed(write_report(tmp_path).read_text(encoding="utf-8"))
    assert parser.ids == ["run", "table-run"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "summary.json: not found"),
        ("{not json", "not valid JSON (line 1"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"model": {"name": "m"}}), "missing or invalid 'model.n_layers'"),
        (json.dumps({"model": {"n_layers": 2, "n_heads": 2}, "chosen": [1]}), "'chosen' must be a JSON object"),
    ],
)
def test_bad_summary_is_one_clear_error(tmp_path, content, message):
    if content is not None:
        (tmp_path / "summary.json").write_text(content)
    with pytest.raises(HeadpruneError, match=re.escape(message)) as info:
        write_report(tmp_path)
    assert "\n" not in str(info.value)


def test_malformed_inner_part_is_one_clear_error(tmp_path):
    summary = make_summary()
    summary["h1"]["OI"]["ranking"] = [{"k": 1}]
    write_summary(tmp_path, summary)
    with pytest.raises(HeadpruneError, match="malformed summary"):
        write_report(tmp_path)


def test_load_summary_accepts_the_file_itself(tmp_path):
    path = write_summary(tmp_path, make_summary())
    assert load_summary(path).model.n_heads == 4


def test_cli_report_errors_exit_2_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "from headprune.cli import main; main()", "report", str(tmp_path)],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "summary.json: not found" in result.stderr


def test_which_order_prunes_best_with_several_orders(tmp_path):
    """Schema 4 (five orders, per-seed H1 scores, stability): one plot per dataset with every order's
    curve, the mean F1 over k and the safe k (non-inferior to CM) per order, the pairwise paired tests, the
    stability beside the scores, and one sentence of answer."""
    from headprune.curves import answer, compare_orders
    from headprune.summary import Summary

    data = make_summary(version=4)
    write_summary(tmp_path, analysed(data))
    path = write_report(tmp_path)
    parser = _Page()
    parser.feed(path.read_text(encoding="utf-8"))
    assert {"orders", "table-orders", "table-orders-pairs"} <= set(parser.ids)
    figures = {img["data-file"] for img in parser.images}
    assert {f"figures/orders_{ds}.png" for ds in ("person", "hobbit", "movie")} <= figures
    md = (path.parent / "tables.md").read_text(encoding="utf-8")
    section = md[md.index("## Which order prunes best"):md.index("## Pairwise")]
    rows = {line.split(" | ")[0].strip("| *"): line for line in section.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"OI", "OI-layer", "fisher", "magnitude", "A1"}
    summary = Summary.from_json(data)
    cm = {ds: cell.scores for ds, cell in summary.step2_comparison.models["CM"].items()}
    found = compare_orders({o: e.seed_scores for o, e in summary.h1.items()}, cm,
                           {o: e.k_values for o, e in summary.h1.items()})
    for order in ("OI", "fisher", "A1"):
        assert f"{100 * found['orders'][order]['mean_area']:.2f}" in rows[order]
    assert "0.61 (-0.05) 2 pairs" in rows["fisher"] and "0.47 (n/a) 2 pairs" in rows["fisher"]
    assert "| 0.65 |" in rows["fisher"]  # bootstrap agreement: the mean over k of 0.75 and 0.55
    assert "nil (random)" in rows["A1"] and "deterministic" in rows["magnitude"]
    sentence = answer(found)
    assert found["best"] in sentence and sentence in md
    assert html.escape(sentence) in path.read_text(encoding="utf-8")
    pairs = md[md.index("## Pairwise"):]
    pairs = pairs[:pairs.index("\n## ")]
    assert pairs.count("\n| ") == 1 + 10  # the header and the 10 pairs of 5 orders
    assert "Holm" in pairs


def test_which_order_prunes_best_says_over_which_seeds_when_a_race_left_some_out(tmp_path):
    """A race that scored a candidate with fewer seeds on one dataset: the areas there are over the
    seeds every cell shares, and the note says how many per dataset."""
    from headprune.report import write_report

    data = make_summary(version=4)
    first = next(iter(data["h1"].values()))
    ds = next(iter(first["seed_scores"]))
    k = max(first["seed_scores"][ds], key=int)
    first["seed_scores"][ds][k][1] = None  # seed 2 of the largest k not scored on that dataset
    write_summary(tmp_path, analysed(data))
    md = (write_report(tmp_path).parent / "tables.md").read_text(encoding="utf-8")
    others = [d for d in first["seed_scores"] if d != ds]
    assert f"over the seeds every one of those cells was scored with ({ds}: 1, " in md
    assert all(f"{d}: 2" in md for d in others)


def test_the_orders_section_places_the_criteria_against_the_random_orders(tmp_path):
    """One random order (A1): the section says it is no null distribution. Add a second (A2, a copy of
    A1's curves moved down a point): the section places every criterion among them."""
    import copy

    from headprune.curves import against_chance, chance_sentence, compare_orders
    from headprune.summary import Summary

    data = make_summary(version=4)
    write_summary(tmp_path, analysed(data))
    assert "1 random order is no null distribution" in write_report(tmp_path).read_text(encoding="utf-8")
    data["orders"]["A2"] = copy.deepcopy(data["orders"]["A1"])
    data["h1"]["A2"] = copy.deepcopy(data["h1"]["A1"])
    for per_k in data["h1"]["A2"]["seed_scores"].values():
        for k, scores in per_k.items():
            per_k[k] = [None if v is None else v - 0.01 for v in scores]
    write_summary(tmp_path, analysed(data))
    page = write_report(tmp_path).read_text(encoding="utf-8")
    summary = Summary.from_json(data)
    cm = {ds: cell.scores for ds, cell in summary.step2_comparison.models["CM"].items()}
    found = compare_orders({o: e.seed_scores for o, e in summary.h1.items()}, cm,
                           {o: e.k_values for o, e in summary.h1.items()})
    chance = against_chance(found, ["A1", "A2"])
    assert set(chance["criteria"]) == {"OI", "OI-layer", "fisher", "magnitude"}
    assert html.escape(chance_sentence(chance)) in page and "no null distribution" not in page
    # OI is among the orders: the section says how much Algorithm 2's first batch weighs.
    assert "rests largely on each finetuning&#x27;s first batch" in page


def test_g2_tables_say_which_seeds_chose_the_models_and_which_are_fresh(tmp_path):
    """Tables 7-10 (the selection seeds, as the dissertation) and, when the summary has it, the same
    comparison on fresh seeds next to them, each saying which seeds it used; a summary without the
    fresh comparison (older, or the paper protocol) renders Tables 7-10 alone."""
    old = make_summary(version=4)
    old.setdefault("config", {}).setdefault("step2", {})["seeds"] = "1-2"
    write_summary(tmp_path / "old", old)
    text = write_report(tmp_path / "old").read_text(encoding="utf-8")
    assert 'id="step2-comparison"' in text and 'id="step2-fresh"' not in text
    assert "the Step 2 selection seeds: the very seeds that chose these models" in text
    assert "next section scores them on fresh seeds" not in text

    new = copy.deepcopy(old)
    fresh = copy.deepcopy(old["step2_comparison"])
    fresh["MOIH1"]["person"]["mean"] = 0.5012
    fresh["significance"] = [{"dataset": "hobbit", "better": "CM", "worse": "MOIH2", "p_value": 0.0456}]
    new.update(schema_version=6, step2_fresh_comparison=fresh, step2_fresh_seeds=[201, 202])
    write_summary(tmp_path / "new", new)
    path = write_report(tmp_path / "new")
    text = path.read_text(encoding="utf-8")
    assert text.index('id="step2-comparison"') < text.index('id="step2-fresh"') < text.index('id="comparison"')
    assert "next section scores them on fresh seeds" in text
    assert "Seeds: 201, 202, fresh seeds that no Step 2 selection used" in text
    md = (path.parent / "tables.md").read_text(encoding="utf-8")
    assert "H1 on G2, fresh seeds: MAMH1, MOIH1, CM (as Table 7)" in md
    assert "All strategies on G2, fresh seeds: " in md and "(as Table 10)" in md
    assert "50.12 (" in md  # the fresh table's own numbers
    assert "{CM} > {MOIH2} (p = 0.0456)" in md and "{MOIH1} > {CM} (p = 0.0321)" in md  # each table its t-tests
    for table in ("h1", "h2", "h3", "all"):
        assert f'id="table-g2-fresh-{table}"' in text and f'id="table-g2-{table}"' in text


def test_a_summary_before_the_order_comparison_shows_the_curves_and_says_why_no_more(tmp_path):
    """The report computes no statistics: a summary without `order_comparison` (before schema 7) gets
    every order's curves, without the complete model's band, and a note instead of the tables."""
    write_summary(tmp_path, make_summary(version=4))
    path = write_report(tmp_path)
    parser = _Page()
    parser.feed(path.read_text(encoding="utf-8"))
    assert "orders" in parser.ids and "table-orders" not in parser.ids and "table-orders-pairs" not in parser.ids
    assert {f"figures/orders_{ds}.png" for ds in ("person", "hobbit", "movie")} <= {
        img["data-file"] for img in parser.images}
    assert "holds no comparison of the orders" in path.read_text(encoding="utf-8")


def test_the_report_shows_the_summarys_statistics_not_its_own(tmp_path):
    """The overview and the orders' table are the summary's numbers: changed there, changed in the report."""
    data = analysed(make_summary(version=4))
    data["overview"]["MOIH1"].update(mean=0.123456, better_than_cm=7, datasets=9)
    data["order_comparison"]["orders"]["fisher"]["mean_area"] = 0.987654
    data["order_comparison"]["bootstrap_agreement"]["fisher"] = 0.42
    write_summary(tmp_path, data)
    md = (write_report(tmp_path).parent / "tables.md").read_text(encoding="utf-8")
    overview = next(line for line in md.splitlines() if line.startswith("| MOIH1 | H1 |"))
    assert "| 12.35 (" in overview and "| 7 of 9 |" in overview
    orders = md[md.index("## Which order prunes best"):md.index("## Pairwise")]
    fisher = next(line for line in orders.splitlines() if line.startswith(("| fisher |", "| **fisher** |")))
    assert "98.77" in fisher and "| 0.42 |" in fisher


def test_the_header_and_run_facts_show_the_time_budget_and_the_runs_alpha(tmp_path):
    """`run --budget`: the budget and the profile it chose in the header and the run's facts; the
    t-tests' level in the comparison tables is the run's `generalization.alpha`."""
    data = make_summary(version=3)
    data["budget"] = {"budget": "2h", "budget_seconds": 7200.0, "profile": "quick", "fits": True,
                      "estimated_seconds": {"quick": 3000.0}}
    data["config"]["generalization"] = {"alpha": 0.01}
    data["schema_version"] = 5
    write_summary(tmp_path, data)
    page = write_report(tmp_path).read_text(encoding="utf-8")
    header = page[page.index("<header>"):page.index("</header>")]
    assert "time budget 2h: profile quick, estimated to fit" in header
    md = (tmp_path / "report" / "tables.md").read_text(encoding="utf-8")
    assert "| time budget | 2h: profile quick, estimated to fit |" in md
    assert "t-test: paired by seed, p < 0.01;" in md and "p < 0.05" not in md
