"""Benchmark: seconds per stage of one evaluation (PRUN_ADJ_EVAL: adjust, features, SVM) on a CPU,
before and after the CPU changes of issue 27, measured side by side in one run.

    python bench/cpu_profile.py                                   # paper settings: 4 epochs, whole datasets
    python bench/cpu_profile.py --epochs 1 --max-rows 400 --datasets person   # a short run (says so)
    python bench/cpu_profile.py --bertweet-steps 4                # also the BERTweet shape, complete vs 68 pruned

Per dataset (the embedded MiniLM, the complete model, seeds 1 and 2), three set-ups:

- "before": what a CPU run did before: one evaluation at a time in this process with torch's
  default threads (all cores), the SVM stage by libsvm's own RBF kernel (sklearn's
  cross_val_score of SVC(class_weight="balanced")), fp32;
- "after_fp32": the default now: `run.workers` worker processes of 1 thread each (one per core),
  each evaluating one seed at the same time, the SVM stage from one Gram matrix (`scoring.svm_f1`);
- "after_bf16": the same with `run.precision = "bf16"` (where the CPU has bf16).

Each set-up reports per-stage seconds of each evaluation (the stages timed inside `score_seed`),
its wall time, and evaluations per hour (evaluations / wall time). The "before" set-up evaluates
the seeds one after the other; "after" set-ups run them at once, one per worker. F1s: "before" and
"after_fp32" differ only by the SVM implementation (same F1 to 1e-9: tests/test_scoring.py) and by
the threads per task (rounding of the adjusting step), so the JSON also gives libsvm's F1 on the
after-run's features ("svm_libsvm_f1_on_same_features").

`--bertweet-steps N`: the BERTweet shape (bench/bertweet.py: random-init RoBERTa, 134,965,505
parameters), N adjusting steps of batch 16 tweets of `person` (MiniLM token ids) complete and as the
dissertation's MOIH1 (its first 68 heads of OI pruned), alternating, median seconds per step, 1
thread: the dissertation's "finetuning >= 10% faster" on a CPU (bench/inference.py measures the same
at a fixed tweet length, with inference).

Anything shorter than the paper's settings (epochs, rows) is recorded under "shortened" in the JSON.
Writes bench/results/<date>-cpu-profile.json (or --out)."""

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

DEFAULT_DATASETS = ("person", "SemEval18", "SemEval17-test")


def load(dataset: str, max_rows: int):
    """MiniLM (no warm-up: it has its MLM head) and the dataset's token ids and labels (a stratified,
    seeded subsample of `max_rows` when > 0, as `data.max_examples` does)."""
    from headprune.base import load_base
    from headprune.data import cap_examples, load_dataset
    from headprune.scoring import encode

    base = load_base("minilm", warmup=None)
    ds = load_dataset(dataset)
    if max_rows:
        ds = cap_examples(ds, max_rows)
    return base, encode(base.tokenizer, ds.texts, base.max_length), ds.labels


def timed_evaluation(dataset: str, seed: int, epochs: int, max_rows: int, precision: str, svm: str,
                     threads: int | None) -> dict:
    """One evaluation (`scoring.score_seed`, the complete model) with its stages timed; `svm`
    "libsvm" replaces the SVM stage by libsvm's own kernel (the code before), "gram" is today's."""
    import numpy as np
    import torch

    from headprune import scoring
    from headprune.data import split_halves
    from headprune.settings import ScoreSettings

    multiprocessing.current_process().name = "MainProcess"  # the seeded MLM collator runs in workers too
    if threads:
        torch.set_num_threads(threads)
    base, ids, labels = load(dataset, max_rows)
    times: dict = {}
    features_seen: list = []

    def timer(name, fn):
        def run(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            times[name] = round(time.perf_counter() - start, 3)
            if name == "features":
                features_seen.append(out)
            return out
        return run

    def libsvm(x, y, n_folds, seed, device="cpu"):
        from sklearn.model_selection import StratifiedKFold, cross_val_score
        from sklearn.svm import SVC

        folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        return float(np.mean(cross_val_score(SVC(class_weight="balanced"), x, y, cv=folds, scoring="f1_macro")))

    real = (scoring.adjust, scoring.features, scoring.svm_f1)
    scoring.adjust = timer("adjust", scoring.adjust)
    scoring.features = timer("features", scoring.features)
    scoring.svm_f1 = timer("svm", libsvm if svm == "libsvm" else scoring.svm_f1)
    try:
        start = time.perf_counter()
        score = scoring.score_seed(base.model, base.tokenizer, ids, labels, (), seed, ScoreSettings(epochs=epochs),
                                   torch.device("cpu"), precision)
        times["evaluation"] = round(time.perf_counter() - start, 3)
    finally:
        scoring.adjust, scoring.features, scoring.svm_f1 = real
    out = {"seed": seed, "threads": torch.get_num_threads(), "seconds": times, "f1": score.f1,
           "rows": len(ids)}
    if svm == "gram":
        x = features_seen[0]
        _, classify = split_halves(labels, seed)
        start = time.perf_counter()
        out["svm_libsvm_f1_on_same_features"] = libsvm(x, labels[classify], 10, seed)
        out["svm_libsvm_seconds_on_same_features"] = round(time.perf_counter() - start, 3)
    return out


def _worker(args: tuple) -> dict:
    return timed_evaluation(*args)


def setup(dataset: str, seeds: list[int], epochs: int, max_rows: int, precision: str, svm: str,
          workers: int) -> dict:
    """The seeds' evaluations: one after another here (workers 0, default threads) or in `workers`
    spawned processes of 1 thread, all at once."""
    start = time.perf_counter()
    if workers == 0:
        runs = [timed_evaluation(dataset, s, epochs, max_rows, precision, svm, None) for s in seeds]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            runs = pool.map(_worker, [(dataset, s, epochs, max_rows, precision, svm, 1) for s in seeds])
    wall = time.perf_counter() - start
    # Model loading is not part of an evaluation: count the evaluations' own seconds when serial,
    # the longest one (they run at once) when in workers.
    busy = (sum(r["seconds"]["evaluation"] for r in runs) if workers == 0
            else max(r["seconds"]["evaluation"] for r in runs))
    return {"precision": precision, "svm": svm, "workers": workers or 1, "runs": runs,
            "wall_seconds_with_loading": round(wall, 2), "evaluation_seconds": round(busy, 2),
            "evaluations_per_hour": round(3600 * len(runs) / busy, 2)}


def bertweet(steps: int) -> dict:
    """Seconds per adjusting step of the BERTweet shape, complete vs the dissertation's MOIH1 (68
    heads pruned), batch 16 tweets of `person`, 1 thread (bench/bertweet.py)."""
    import statistics

    import torch
    from bertweet import adjusting_step_seconds, bertweet_shape, oi_heads

    from headprune.base import load_base
    from headprune.data import load_dataset
    from headprune.models import count_parameters
    from headprune.scoring import encode, pruned_copy

    torch.set_num_threads(1)
    model, heads = bertweet_shape(), oi_heads()
    models = {"complete": model, "pruned_68": pruned_copy(model, heads)}
    tokenizer = load_base("minilm", warmup=None).tokenizer
    ids = encode(tokenizer, load_dataset("person").texts[: 16 * (steps + 1)], 128)
    seconds = adjusting_step_seconds(models, tokenizer, ids, steps)
    out: dict = {"steps": steps, "batch_size": 16, "threads": 1, "pruned": "MOIH1: the first 68 heads of OI",
                 "pruned_heads": [list(h) for h in heads]}
    for name, m in models.items():
        out[name] = {"n_params": count_parameters(m), "step_seconds": seconds[name],
                     "seconds_per_step": statistics.median(seconds[name])}
    out["pruned_vs_complete_time"] = round(
        out["pruned_68"]["seconds_per_step"] / out["complete"]["seconds_per_step"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS))
    parser.add_argument("--epochs", type=int, default=4, help="adjusting epochs (the paper: 4)")
    parser.add_argument("--max-rows", type=int, default=0, help="> 0: a stratified subsample (the paper: 0, all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 set-up")
    parser.add_argument("--bertweet-steps", type=int, default=0, help="> 0: also the BERTweet shape (steps)")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)

    from headprune.devices import cpu_has_bf16

    result: dict = {
        **stamp(),
        "settings": {"model": "minilm (embedded)", "epochs": args.epochs, "max_rows": args.max_rows,
                     "seeds": args.seeds, "pruned": "none (the complete model)", "n_folds": 10, "batch_size": 16},
        "shortened": [s for s in (f"epochs = {args.epochs} (paper: 4)" if args.epochs != 4 else "",
                                  f"at most {args.max_rows} rows per dataset (paper: all)" if args.max_rows else "")
                      if s],
        "datasets": {},
    }
    for dataset in args.datasets:
        print(f"{dataset}: before", flush=True)
        entry = {"before": setup(dataset, args.seeds, args.epochs, args.max_rows, "fp32", "libsvm", 0)}
        print(f"{dataset}: after, fp32", flush=True)
        entry["after_fp32"] = setup(dataset, args.seeds, args.epochs, args.max_rows, "fp32", "gram", args.workers)
        if not args.no_bf16 and cpu_has_bf16():
            print(f"{dataset}: after, bf16", flush=True)
            entry["after_bf16"] = setup(dataset, args.seeds, args.epochs, args.max_rows, "bf16", "gram", args.workers)
        before = entry["before"]["evaluations_per_hour"]
        entry["speedup_evaluations_per_hour"] = {k: round(entry[k]["evaluations_per_hour"] / before, 3)
                                                 for k in ("after_fp32", "after_bf16") if k in entry}
        svm_before = [r["seconds"]["svm"] for r in entry["before"]["runs"]]
        svm_after = [r["seconds"]["svm"] for r in entry["after_fp32"]["runs"]]
        entry["svm_stage_speedup"] = round(sum(svm_before) / max(sum(svm_after), 1e-9), 2)
        entry["svm_same_f1"] = all(abs(r["f1"] - r["svm_libsvm_f1_on_same_features"]) < 1e-9
                                   for r in entry["after_fp32"]["runs"])
        result["datasets"][dataset] = entry
        print(f"  {entry['speedup_evaluations_per_hour']}, SVM x{entry['svm_stage_speedup']}", flush=True)
    if args.bertweet_steps:
        print("BERTweet shape", flush=True)
        result["bertweet_shape"] = bertweet(args.bertweet_steps)
    finish(result, args.out, "cpu-profile")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
