"""Helpers shared by test files: a tiny BERT built in the test, a synthetic summary.json (report,
export, classify), and the tiny pipeline run's datasets and configuration (`tiny_csvs`,
`tiny_config`: pipeline, verify, racing). Test files import helpers from here, never from one another.

Kept apart from conftest.py on purpose: these tests build their own models, independent of the
shared fixtures."""

from __future__ import annotations

import json
from pathlib import Path

N_LAYERS, N_HEADS = 2, 4

# The tiny run's datasets: a Step 1, b/c Step 2 (G2), d/e the generalization check (G3).
TINY_RUN_DATASETS = {"a": "irony", "b": "person", "c": "hobbit", "d": "ntua", "e": "sentiment140"}


def tiny_csvs(directory: Path, air_data_dir: Path, per_class: int = 12) -> dict[str, Path]:
    """The first `per_class` tweets of each class of every `TINY_RUN_DATASETS` source, as `<name>.csv`."""
    import pandas as pd

    paths = {}
    for name, source in TINY_RUN_DATASETS.items():
        frame = pd.read_csv(air_data_dir / f"{source}.csv", dtype=str, keep_default_na=False)
        parts = [frame[frame["class"] == c].head(per_class) for c in ("positive", "negative")]
        path = directory / f"{name}.csv"
        pd.concat(parts).to_csv(path, index=False)
        paths[name] = path
    return paths


def tiny_config(model_dir: Path, csvs: dict[str, Path], report: bool = False) -> dict:
    """Every stage of the method on `tiny_csvs`, in seconds: the configuration as a dict (`config.from_dict`)."""
    return {
        "model": {"name": str(model_dir), "mlm_head_warmup_steps": 0},
        "step1": {"datasets": [str(csvs["a"])], "seeds": "1", "epochs": 1},
        "scoring": {"epochs": 1, "n_folds": 3},
        "step2": {
            "datasets": [str(csvs["b"]), str(csvs["c"])], "seeds": "1-2", "strategies": ["H1", "H2", "H3"],
            "orders": ["OI", "A1"], "random_order_strategies": ["H1"], "h1_k_step": 4, "group_size": 4,
        },
        "generalization": {"datasets": [str(csvs["d"]), str(csvs["e"])], "seeds": "101-103"},
        "run": {"device": "cpu", "report": report},
    }

# Chosen models of the synthetic run: MOIH1 removes layer 1 whole, MA1H3 prunes nothing of layer 1.
CHOSEN_PRUNED = {
    "CM": [],
    "MOIH1": [[1, 0], [1, 1], [1, 2], [1, 3], [0, 2]],
    "MA1H1": [[0, 1], [1, 3]],
    "MOIH2": [[0, 3]],
    "MA1H2": [[1, 0], [1, 2]],
    "MOIH3": [[0, 0], [1, 1], [1, 2]],
    "MA1H3": [[0, 0], [0, 1], [0, 3]],
}
G2 = ["person", "hobbit", "movie"]
G3 = ["aisopos", "sanders"]


def build_tiny_bert(directory: Path, seed: int = 0) -> Path:
    """A tiny random BertForMaskedLM (32 hidden, 2 layers x 4 heads) with the embedded MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from headprune.models import resolve_model_path

    directory = Path(directory)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=32,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        intermediate_size=48,
        max_position_embeddings=130,
    )
    BertForMaskedLM(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _f1(base: float, i: int, j: int) -> float:
    """A deterministic, varied F1 in [0.6, 0.95]."""
    return round(0.6 + ((base * 7919 + i * 104729 + j * 1299709) % 3500) / 10000, 4)


def make_summary(model_name: str = "tiny-bert", version: int = 1) -> dict:
    """A small but complete summary.json (2 layers x 4 heads, OI and A1) of schema version 1 (no
    `schema_version` key), or of `version` 3: with the per-seed random-order means (MAM<strategy>)
    among the generalization models and the Step 2 comparison on G2 (Tables 7-10), or of `version` 4:
    also OI-layer, fisher and magnitude (H1 only), each order's stability and H1's per-seed scores."""
    heads = [[l, h] for l in range(N_LAYERS) for h in range(N_HEADS)]
    # MOIH1 (k = 5) is exactly the 5 least important heads of OI.
    oi_ranked = [[0, 0], [0, 1], [0, 3], [1, 3], [0, 2], [1, 0], [1, 1], [1, 2]]
    a1_ranked = [[1, 2], [0, 0], [0, 3], [1, 1], [0, 2], [1, 0], [0, 1], [1, 3]]
    matrix = [[0.0] * N_HEADS for _ in range(N_LAYERS)]
    for rank, (l, h) in enumerate(oi_ranked):
        matrix[l][h] = round(1.0 - rank / 7, 4)
    total = N_LAYERS * N_HEADS
    k_values = list(range(total))

    def h1(order_i: int, chosen_k: int) -> dict:
        scores = {ds: {str(k): _f1(order_i, d, k) for k in k_values} for d, ds in enumerate(G2)}
        rows = []
        for k in k_values:
            rows.append({"model": f"k{k}", "k": k, "n_pruned": k, "rank_sum": float(3 + ((k * 5 + order_i) % 13)),
                         "ranks": {ds: float(1 + (k + d) % total) for d, ds in enumerate(G2)},
                         "scores": {ds: scores[ds][str(k)] for ds in G2}})
        chosen = next(r for r in rows if r["k"] == chosen_k)
        chosen["rank_sum"] = 1.5
        rows.sort(key=lambda r: (r["rank_sum"], -r["n_pruned"]))
        return {"k_values": k_values, "departure": None, "scores": scores, "ranking": rows, "chosen_k": chosen_k}

    def greedy(order_i: int, chosen_name: str, complete: bool) -> dict:
        per_dataset = {
            ds: {"pruned_heads": CHOSEN_PRUNED[chosen_name] if ds == "hobbit" else heads[: d + 1],
                 "n_pruned": len(CHOSEN_PRUNED[chosen_name]) if ds == "hobbit" else d + 1, "score": 0.8}
            for d, ds in enumerate(G2)
        }
        cross = {src: {ds: _f1(order_i + 10, s, d) for d, ds in enumerate(G2)} for s, src in enumerate(G2)}
        ranking = [
            {"model": src, "n_pruned": per_dataset[src]["n_pruned"], "rank_sum": float(3 + i * 2),
             "ranks": {ds: float(1 + (i + d) % 3) for d, ds in enumerate(G2)}}
            for i, src in enumerate(["hobbit", "person", "movie"])
        ]
        entry = {"per_dataset": per_dataset, "cross": cross, "ranking": ranking, "chosen": "hobbit"}
        if complete:
            entry["complete"] = {ds: 0.75 for ds in G2}
        return entry

    chosen = {}
    for name, pruned in CHOSEN_PRUNED.items():
        strategy = None if name == "CM" else name[-2:]
        order = None if name == "CM" else name[1:-2]
        chosen[name] = {"pruned_heads": pruned, "n_pruned": len(pruned), "strategy": strategy, "order": order,
                        "n_params": 1_000_000 - 2_000 * len(pruned), "size_bytes": 4_000_000 - 8_000 * len(pruned)}

    generalization: dict = {}
    seeds = [101, 102, 103]
    for m, name in enumerate(CHOSEN_PRUNED):
        generalization[name] = {}
        for d, ds in enumerate(G3):
            scores = [_f1(m + 20, d, s) for s in range(3)]
            mean = sum(scores) / 3
            std = (sum((x - mean) ** 2 for x in scores) / 2) ** 0.5
            times = [10.0 - len(CHOSEN_PRUNED[name]) + 0.1 * s for s in range(3)]
            generalization[name][ds] = {"mean": mean, "std": std, "scores": scores, "pct_vs_cm": None,
                                        "adjust_seconds": times, "adjust_mean": sum(times) / 3, "adjust_std": 0.1,
                                        "adjust_pct_vs_cm": None}
    for name in CHOSEN_PRUNED:
        for ds in G3:
            cm = generalization["CM"][ds]
            value = generalization[name][ds]
            value["pct_vs_cm"] = 100 * (value["mean"] / cm["mean"] - 1)
            value["adjust_pct_vs_cm"] = 100 * (value["adjust_mean"] / cm["adjust_mean"] - 1)
    generalization["significance"] = [
        {"dataset": "aisopos", "better": "MOIH1", "worse": "CM", "p_value": 0.0123},
        {"dataset": "sanders", "better": "MA1H3", "worse": "MOIH3", "p_value": 0.0456},
    ]
    random_means = {
        f"MAMH{s}": {**{ds: {"mean": generalization[f"MA1H{s}"][ds]["mean"], "std": 0.0,
                               "pct_vs_cm": generalization[f"MA1H{s}"][ds]["pct_vs_cm"]} for ds in G3},
                     "n_pruned": float(len(CHOSEN_PRUNED[f"MA1H{s}"]))}
        for s in (1, 2, 3)
    }
    summary = {
        "headprune_version": "0.1.0",
        "date": "2025-01-02T03:04:05+00:00",
        "device": "cpu (test)",
        "versions": {"python": "3.11", "torch": "2.x", "transformers": "5.x", "scikit-learn": "1.x", "scipy": "1.x"},
        "config": {"model": model_name, "seeds": [1, 2], "datasets": {"g2": G2, "g3": G3}},
        "model": {"name": model_name, "fingerprint": "0123456789abcdef", "n_layers": N_LAYERS, "n_heads": N_HEADS,
                  "n_params": 1_000_000, "size_bytes": 4_000_000},
        "orders": {"OI": {"ranked": oi_ranked, "matrix": matrix}, "A1": {"ranked": a1_ranked, "matrix": None}},
        "h1": {"OI": h1(0, 5), "A1": h1(1, 2)},
        "h2": {"OI": greedy(0, "MOIH2", False), "A1": greedy(1, "MA1H2", False)},
        "h3": {"OI": greedy(0, "MOIH3", True), "A1": greedy(1, "MA1H3", True)},
        "chosen": chosen,
        "generalization": generalization,
        "generalization_seeds": seeds,
        "random_means": random_means,
    }
    if version >= 3:
        for s in (1, 2, 3):  # one random order: the per-seed mean is that order's model
            generalization[f"MAMH{s}"] = {ds: dict(generalization[f"MA1H{s}"][ds]) for ds in G3}
        step2: dict = {}
        for m, name in enumerate(["CM", "MOIH1", "MOIH2", "MOIH3", "MAMH1", "MAMH2", "MAMH3"]):
            step2[name] = {}
            for d, ds in enumerate(G2):
                scores = [_f1(m + 40, d, s) for s in range(2)]
                mean = sum(scores) / 2
                step2[name][ds] = {"scores": scores, "mean": mean, "std": abs(scores[0] - scores[1]) / 2 ** 0.5}
        for name in step2:
            for ds in G2:
                step2[name][ds]["pct_vs_cm"] = 100 * (step2[name][ds]["mean"] / step2["CM"][ds]["mean"] - 1)
        step2["significance"] = [{"dataset": "person", "better": "MOIH1", "worse": "CM", "p_value": 0.0321}]
        summary = {"schema_version": 3, **summary, "step2_comparison": step2}
    if version >= 4:
        _add_orders(summary, h1)
    return summary


# Version 4: the orders beside OI and A1 (H1 only), each order's stability, H1's per-seed scores.
EXTRA_ORDERS = {"OI-layer": "importance", "fisher": "importance", "magnitude": "weights"}


def _add_orders(summary: dict, h1) -> None:
    """OI-layer, fisher and magnitude with H1 (the OI ranking rotated), `stability` on every order (a
    note for A1 and magnitude), and per seed of the Step 2 seeds (the two of Tables 7-10) every H1
    score, k = 0 being the complete model of the G2 comparison in every order."""
    summary["schema_version"] = 4
    oi = summary["orders"]["OI"]
    summary["orders"]["OI"]["kind"], summary["orders"]["A1"]["kind"] = "importance", "random"
    for i, (name, kind) in enumerate(EXTRA_ORDERS.items(), start=1):
        summary["orders"][name] = {"ranked": oi["ranked"][i:] + oi["ranked"][:i], "matrix": oi["matrix"], "kind": kind}
        summary["h1"][name] = h1(1 + i, 2 * i)
    frequency = [[0.5] * N_HEADS for _ in range(N_LAYERS)]
    for order in summary["orders"].values():
        if order["kind"] == "importance":
            order["stability"] = {
                "runs": 4,
                "seeds": {"pairs": 2, "spearman": 0.61, "spearman_within_layers": -0.05},
                "datasets": {"pairs": 2, "spearman": 0.47, "spearman_within_layers": None},
                "bootstrap": {"resamples": 1000, "seed": 0, "bottom_k": {
                    "2": {"agreement": 0.75, "frequency": frequency},
                    "4": {"agreement": 0.55, "frequency": frequency}}},
            }
        else:
            order["stability"] = {"note": f"a {order['kind']} order"}
    cm = summary["step2_comparison"]["CM"]
    for entry in summary["h1"].values():
        entry["seeds"] = [1, 2]
        entry["seed_scores"] = {}
        for ds, per_k in entry["scores"].items():
            per_k["0"] = cm[ds]["mean"]
            entry["seed_scores"][ds] = {k: [v - 0.01, v + 0.01] for k, v in per_k.items()}
            entry["seed_scores"][ds]["0"] = list(cm[ds]["scores"])
        for row in entry["ranking"]:
            if row["k"] == 0:
                row["scores"] = {ds: entry["scores"][ds]["0"] for ds in entry["scores"]}


def analysed(summary: dict) -> dict:
    """`summary` with what the pipeline computes from its parts (schema 7: `analysis.overview`,
    `analysis.order_comparison` at the default alpha and safe-k margin), as a run writes it."""
    from headprune.analysis import analyse
    from headprune.curves import DEFAULT_SAFE_K_MARGIN
    from headprune.summary import Summary

    parsed = Summary.from_json(summary)
    analyse(parsed, 0.05, DEFAULT_SAFE_K_MARGIN)
    return {**summary, "schema_version": 7, **{key: value for key, value in parsed.to_json().items()
                                               if key in ("overview", "order_comparison")}}


def write_summary(run_dir: Path, summary: dict) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=1))
    return path
