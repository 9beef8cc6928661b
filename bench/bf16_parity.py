"""Benchmark: does `run.precision = "bf16"` (the reference loop's adjusting under bf16 autocast, fp32
master weights) score as fp32 does? The embedded MiniLM, complete model, paper settings (4 epochs,
whole dataset, 10 folds), on 2 small G2 datasets x 5 seeds, each (dataset, seed) in fp32 and in bf16:
a paired t-test over the 10 pairs of F1s (and per dataset), with the mean difference and its 95%
interval, and the adjusting seconds of each.

    python bench/bf16_parity.py                          # person and hobbit, seeds 1-5, 2 workers
    python bench/bf16_parity.py --datasets person movie --seeds 1 2 3 4 5 --workers 2 --out FILE

Evaluations run in `--workers` spawned processes of 1 thread (as `run.workers` does). Parity holds
when the test does not reject equal means (p >= 0.05) and the interval of the mean difference lies
within +-0.01 F1 (what `run.precision` may become the default on). On a CPU without bf16 it
refuses, as `headprune run` does. Writes bench/results/<date>-cpu-bf16-parity.json."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from record import finish, stamp  # noqa: E402

MARGIN = 0.01  # the largest |mean F1 difference| bf16 may show and still be called on a par


def evaluate(job: tuple[str, int, str, int]) -> dict:
    import torch

    from headprune.base import load_base
    from headprune.data import load_dataset
    from headprune.scoring import encode, score_seed
    from headprune.settings import ScoreSettings

    dataset, seed, precision, epochs = job
    multiprocessing.current_process().name = "MainProcess"  # the seeded MLM collator refuses workers otherwise
    torch.set_num_threads(1)
    base = load_base("minilm", warmup=None)
    ds = load_dataset(dataset)
    ids = encode(base.tokenizer, ds.texts, base.max_length)
    score = score_seed(base.model, base.tokenizer, ids, ds.labels, (), seed, ScoreSettings(epochs=epochs),
                       torch.device("cpu"), precision)
    return {"dataset": dataset, "seed": seed, "precision": precision, "f1": score.f1,
            "adjust_seconds": round(score.adjust_seconds, 2)}


def paired(fp32: list[float], bf16: list[float]) -> dict:
    import numpy as np
    from scipy import stats

    diff = np.asarray(bf16) - np.asarray(fp32)
    out = {"n": len(diff), "mean_fp32": float(np.mean(fp32)), "mean_bf16": float(np.mean(bf16)),
           "mean_difference_bf16_minus_fp32": float(diff.mean())}
    if len(diff) > 1 and diff.std(ddof=1) > 0:
        test = stats.ttest_rel(bf16, fp32)
        half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
        out.update(t=float(test.statistic), p=float(test.pvalue),
                   ci95=[float(diff.mean() - half), float(diff.mean() + half)])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["person", "hobbit"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)

    from headprune.devices import cpu_has_bf16

    if not cpu_has_bf16():
        print("this CPU has no bf16 support: nothing to compare", file=sys.stderr)
        return 1
    result: dict = stamp()
    jobs = [(d, s, p, args.epochs) for d in args.datasets for s in args.seeds for p in ("fp32", "bf16")]
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        runs = pool.map(evaluate, jobs, chunksize=1)
    by = {(r["dataset"], r["seed"], r["precision"]): r for r in runs}

    def f1s(precision: str, datasets: list[str]) -> list[float]:
        return [by[(d, s, precision)]["f1"] for d in datasets for s in args.seeds]

    overall = paired(f1s("fp32", args.datasets), f1s("bf16", args.datasets))
    holds = bool(overall.get("p", 1.0) >= 0.05 and all(abs(c) <= MARGIN for c in overall.get("ci95", [0.0])))
    result.update({
        "settings": {"model": "minilm (embedded)", "pruned": "none", "epochs": args.epochs, "seeds": args.seeds,
                     "datasets": args.datasets, "workers": args.workers, "threads_per_worker": 1},
        "shortened": [] if args.epochs == 4 else [f"epochs = {args.epochs} (paper: 4)"],
        "wall_seconds": round(time.perf_counter() - start, 1),
        "runs": runs,
        "paired_t_test": overall,
        "per_dataset": {d: paired(f1s("fp32", [d]), f1s("bf16", [d])) for d in args.datasets},
        "adjust_seconds_mean": {p: round(sum(r["adjust_seconds"] for r in runs if r["precision"] == p)
                                         / (len(runs) / 2), 2) for p in ("fp32", "bf16")},
        "parity_rule": f"p >= 0.05 and the 95% interval of the mean difference within +-{MARGIN}",
        "parity_holds": holds,
    })
    print(f"paired t-test: {overall}; parity holds: {holds}")
    finish(result, args.out, "cpu-bf16-parity")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
