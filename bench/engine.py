"""Benchmark: the naive PRUN_ADJ_EVAL loop (bench/naive.py) against the batched engine
(headprune.engine), in one process on the current device, plus F1 parity of the engine with the
reference scorer (`scoring.score_seed`) and the projected GPU hours of a full H1.

    PYTHONPATH=src python bench/engine.py --model .carry/minilm --data-dir .carry/data --out FILE
    python bench/engine.py --quick                      # a CPU smoke run (tiny limits)

Writes `bench/results/<date>-<device>.json` (or --out) after every stage, so a run cut short keeps
what it measured; `--merge FILE` starts from an earlier result (to split the work over several
commands). Keys: device, date, versions, settings, models.<minilm|bertweet-shape>.{naive_tokens_per_s,
engine_tokens_per_s, naive_seconds_per_call, engine_seconds_per_call, svm_seconds, peak_gpu_memory_bytes,
packed_tokens_per_s, packed_seconds_per_call, ...}, parity.<dataset>.{reference_mean, engine_mean, p_value,
max_abs_diff, ...}, parity_packed.<dataset>, projected_h1_gpu_hours.<model>, projected_h1_gpu_hours_packed.<model>.

Parts (--parts): throughput (naive loop vs seed stacks of the complete model), parity (reference vs
engine, paired by seed), packed (H1-like packs of different candidates x seeds in masked stacks, as
`headprune run` trains Step 2 on a GPU; its projection is the one that counts for a run).

Definitions: tokens/s = real (non-padding) tokens of the finetuning batches / wall time of the
adjusting stage (summed over the models trained together for the engine). A naive call is one seed;
an engine call is a group of seeds trained together, and its seconds per call is the group's wall
time (adjust + features + SVM) divided by the number of seeds. The H1 projection is N heads x 7 G2
datasets x 10 seeds calls at the complete model's measured seconds per call (an upper bound: pruned
candidates are smaller)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from naive import naive_score
from record import deep_merge, write_json

from headprune.base import load_base
from headprune.data import GROUPS, expand_datasets, load_dataset
from headprune.devices import reproducible, resolve_device
from headprune.engine import EngineOptions, auto_pack_size
from headprune.engine.stages import SizeCache, score_pack, score_seeds_batched
from headprune.models import count_parameters, load_tokenizer, max_length
from headprune.scoring import encode
from headprune.settings import ScoreSettings, WarmupSettings
from headprune.tasks import SeedTask

BERTWEET_SHAPE = {"vocab_size": 64001, "num_hidden_layers": 12, "num_attention_heads": 12, "hidden_size": 768,
                  "intermediate_size": 3072, "max_position_embeddings": 130, "type_vocab_size": 1}
BERTWEET_PARAMS = 134_965_505
H1_SEEDS = 10


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_seeds(spec: str) -> list[int]:
    seeds: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        seeds += list(range(int(lo), int(hi or lo) + 1))
    return seeds


def versions() -> dict:
    import scipy
    import sklearn
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "scikit-learn": sklearn.__version__, "scipy": scipy.__version__}
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


# ----------------------------------------------------------------------------- models and data


def build_model(key: str, args, device: torch.device):
    """(masked-LM model on CPU, tokenizer, heads in total, info) for 'minilm' or 'bertweet-shape'."""
    if key == "minilm":
        warmup = WarmupSettings(steps=args.warmup_steps) if args.warmup_steps > 0 else None
        base = load_base(args.model, warmup=warmup, data_dir=args.data_dir, cache_dir=args.cache_dir, device=device,
                         progress=lambda m: log(m))
        return base.model, base.tokenizer, base.n_total_heads, {"source": args.model, "warmed_up": base.warmed_up}
    from transformers import RobertaConfig, RobertaForMaskedLM

    tokenizer = load_tokenizer(args.model)  # MiniLM ids (vocab 30522) are valid ids of the 64001 vocabulary
    torch.manual_seed(0)
    model = RobertaForMaskedLM(RobertaConfig(**BERTWEET_SHAPE)).eval()
    n = count_parameters(model)
    if n != BERTWEET_PARAMS:
        log(f"warning: the BERTweet shape has {n} parameters, expected {BERTWEET_PARAMS}")
    return model, tokenizer, 12 * 12, {"source": "random-init RobertaForMaskedLM (BERTweet shape)",
                                       "token_ids": "MiniLM tokenizer"}


def load_encoded(names: list[str], tokenizer, limit: int, args) -> dict:
    from sklearn.model_selection import train_test_split

    out = {}
    for name in names:
        ds = load_dataset(name, data_dir=args.data_dir)
        texts, labels = ds.texts, ds.labels
        if args.max_rows and len(texts) > args.max_rows:
            keep, _ = train_test_split(np.arange(len(texts)), train_size=args.max_rows, stratify=labels, random_state=0)
            keep = np.sort(keep)
            texts, labels = [texts[i] for i in keep], labels[keep]
        out[name] = (encode(tokenizer, texts, limit), np.asarray(labels))
    return out


# ----------------------------------------------------------------------------- stages


def summarize_runs(entry: dict, part: str, runs: dict, device: torch.device) -> None:
    """`<part>_tokens_per_s`, `<part>_seconds_per_call` (per dataset) and the peak memory of a part."""
    entry[f"{part}_tokens_per_s"] = sum(v["tokens"] for v in runs.values()) / sum(v["adjust"] for v in runs.values())
    entry[f"{part}_seconds_per_call"] = {n: v["seconds_per_call"] for n, v in runs.items()}
    entry.setdefault("peak_gpu_memory_bytes", {})[part] = peak(device)


def throughput(key: str, model, tokenizer, n_heads: int, data: dict, args, settings: ScoreSettings,
               device: torch.device, result: dict, save) -> None:
    """The naive loop (unless --skip-naive), then seed stacks of the complete model."""
    if not args.skip_naive:
        naive_throughput(key, model, tokenizer, n_heads, data, args, settings, device, result, save)
    stacks_throughput(key, model, tokenizer, n_heads, data, args, settings, device, result, save)


def model_entry(result: dict, key: str, model, n_heads: int) -> dict:
    entry = result.setdefault("models", {}).setdefault(key, {})
    entry.update({"n_params": count_parameters(model), "n_heads": n_heads})
    return entry


def naive_throughput(key: str, model, tokenizer, n_heads: int, data: dict, args, settings: ScoreSettings,
                     device: torch.device, result: dict, save) -> None:
    """The naive loop (bench/naive.py), one seed (the first) on each of --naive-datasets."""
    entry = model_entry(result, key, model, n_heads)
    naive: dict = {}
    reset_peak(device)
    for name in args.naive_datasets:
        ids, labels = data[name]
        seed = args.seeds[0]
        f1, t = naive_score(model, tokenizer, ids, labels, seed, device, epochs=settings.epochs,
                            n_folds=settings.n_folds)
        naive[name] = {"f1": f1, "seed": seed, "rows": len(labels), "adjust": t.adjust, "features": t.features,
                       "svm": t.svm, "tokens": t.tokens, "steps": t.steps, "seconds": t.total}
        log(f"{key} naive {name}: {t.total:.1f} s (adjust {t.adjust:.1f}, features {t.features:.1f}, "
            f"svm {t.svm:.1f}; {t.tokens / max(t.adjust, 1e-9):,.0f} tokens/s) F1 {f1:.4f}")
    entry["naive"] = naive
    entry["naive_tokens_per_s"] = (sum(v["tokens"] for v in naive.values())
                                   / sum(v["adjust"] for v in naive.values()))
    entry["naive_seconds_per_call"] = {n: v["seconds"] for n, v in naive.items()}
    entry.setdefault("svm_seconds", {})["naive"] = {n: v["svm"] for n, v in naive.items()}
    entry.setdefault("peak_gpu_memory_bytes", {})["naive"] = peak(device)
    save()


def stacks_throughput(key: str, model, tokenizer, n_heads: int, data: dict, args, settings: ScoreSettings,
                      device: torch.device, result: dict, save) -> None:
    """Seed stacks of the complete model (`score_seeds_batched`, all --seeds together) on each of
    --datasets, and the H1 projection at their seconds per call."""
    entry = model_entry(result, key, model, n_heads)
    options = EngineOptions(max_models=args.max_models)
    engine: dict = {}
    reset_peak(device)
    for name in args.datasets:
        ids, labels = data[name]
        stats: dict = {}
        start = time.perf_counter()
        scores = score_seeds_batched(model, tokenizer, ids, labels, (), args.seeds, settings, device, options, stats)
        wall = time.perf_counter() - start
        n = len(args.seeds)
        engine[name] = {"f1": {str(s): sc.f1 for s, sc in zip(args.seeds, scores)}, "n_models": n, "rows": len(labels),
                        "wall": wall,
                        "adjust": stats["adjust_seconds"], "features": stats["features_seconds"],
                        "svm": stats["svm_seconds"], "tokens": stats["tokens"], "steps": stats["steps"],
                        "seconds_per_call": wall / n}
        log(f"{key} engine {name} x{n} seeds: {wall:.1f} s (adjust {stats['adjust_seconds']:.1f}, features "
            f"{stats['features_seconds']:.1f}, svm {stats['svm_seconds']:.1f}; "
            f"{stats['tokens'] / stats['adjust_seconds']:,.0f} tokens/s) mean F1 {np.mean([s.f1 for s in scores]):.4f}")
        entry["engine"] = engine
        save()
    summarize_runs(entry, "engine", engine, device)
    entry.setdefault("svm_seconds", {})["engine"] = {n: v["svm"] / v["n_models"] for n, v in engine.items()}
    if entry.get("naive_tokens_per_s"):
        entry["speedup_tokens_per_s"] = entry["engine_tokens_per_s"] / entry["naive_tokens_per_s"]

    measured = sorted(set(engine) & set(GROUPS["G2"]))
    basis = (f"{n_heads} heads x {len(GROUPS['G2'])} G2 datasets x {H1_SEEDS} seeds calls at the complete model's "
             f"seconds per call; datasets measured: {measured}")
    if args.max_rows:
        basis += f" (SUBSAMPLED to {args.max_rows} rows: not a real projection)"
    if len(measured) < len(GROUPS["G2"]):
        basis += " (not all of G2 measured: the sum covers the measured datasets only)"
    calls = n_heads * H1_SEEDS
    result.setdefault("projected_h1_gpu_hours", {})[key] = calls * sum(entry["engine_seconds_per_call"][n]
                                                                      for n in measured) / 3600
    if entry.get("naive_seconds_per_call") and set(measured) <= set(entry["naive_seconds_per_call"]):
        result.setdefault("projected_h1_gpu_hours_naive", {})[key] = calls * sum(
            entry["naive_seconds_per_call"][n] for n in measured) / 3600
    result.setdefault("projection_basis", {})[key] = basis
    save()


def packed(key: str, model, tokenizer, n_heads: int, data: dict, args, settings: ScoreSettings,
           device: torch.device, result: dict, save) -> None:
    """H1-like packs (what `headprune run` does in Step 2 on a GPU): per dataset, candidates pruning
    the k least important heads of a (random) order for k spread over 0..N-1, each with every seed,
    trained together in masked stacks of `--pack-models` models (default: what fits). Seconds per
    evaluation = a pack's wall time (adjust + features + SVM) / its models; the H1 projection uses it."""
    entry = model_entry(result, key, model, n_heads)
    size = args.pack_models or auto_pack_size(model, device)
    n_candidates = max(1, size // len(args.seeds))
    order = [(l, h) for l in range(model.config.num_hidden_layers) for h in range(model.config.num_attention_heads)]
    order = [order[i] for i in np.random.default_rng(0).permutation(len(order))]
    ks = sorted({int(round(k)) for k in np.linspace(0, n_heads - 1, n_candidates)})
    candidates = [tuple(sorted(order[:k])) for k in ks]
    options = EngineOptions(pack=True, pack_models=size)
    sizes = SizeCache(model)
    out: dict = {}
    reset_peak(device)
    for name in args.datasets:
        tasks = [SeedTask(c, name, s) for c in candidates for s in args.seeds]
        stats: dict = {}
        start = time.perf_counter()
        scores = []
        for at in range(0, len(tasks), size):
            scores += score_pack(model, tokenizer, {name: data[name]}, tasks[at:at + size], settings, device,
                                 options, stats, sizes)
        wall = time.perf_counter() - start
        complete = [sc.f1 for t, sc in zip(tasks, scores) if not t.pruned]
        out[name] = {"n_models": len(tasks), "pack_models": size, "k": ks, "rows": len(data[name][1]), "wall": wall,
                     "adjust": stats["adjust_seconds"], "features": stats["features_seconds"],
                     "svm": stats["svm_seconds"], "tokens": stats["tokens"], "steps": stats["steps"],
                     "seconds_per_call": wall / len(tasks),
                     "f1_complete": dict(zip(map(str, args.seeds), complete)),
                     "f1_mean_by_k": {str(k): float(np.mean([sc.f1 for t, sc in zip(tasks, scores) if t.pruned == c]))
                                      for k, c in zip(ks, candidates)}}
        log(f"{key} packed {name}: {len(tasks)} models ({len(ks)} candidates x {len(args.seeds)} seeds, packs of "
            f"{size}) {wall:.1f} s (adjust {stats['adjust_seconds']:.1f}, features {stats['features_seconds']:.1f}, "
            f"svm {stats['svm_seconds']:.1f}); {stats['tokens'] / stats['adjust_seconds']:,.0f} tokens/s; "
            f"{wall / len(tasks):.2f} s per evaluation")
        entry["packed"] = out
        save()
    summarize_runs(entry, "packed", out, device)
    if entry.get("naive_tokens_per_s"):
        entry["speedup_packed_tokens_per_s"] = entry["packed_tokens_per_s"] / entry["naive_tokens_per_s"]
    measured = sorted(set(out) & set(GROUPS["G2"]))
    calls = n_heads * H1_SEEDS
    result.setdefault("projected_h1_gpu_hours_packed", {})[key] = calls * sum(
        entry["packed_seconds_per_call"][n] for n in measured) / 3600
    basis = (f"{n_heads} heads x {H1_SEEDS} seeds x the G2 datasets measured {measured}, at the packed seconds per "
             f"evaluation (packs of {size})")
    if args.max_rows:
        basis += f" (SUBSAMPLED to {args.max_rows} rows: not a real projection)"
    result.setdefault("projection_basis_packed", {})[key] = basis
    parity = result.get("parity", {})
    for name in measured:
        reference = parity.get(name, {})
        seeds = [s for s in reference.get("seeds", []) if str(s) in out[name]["f1_complete"]]
        if len(seeds) > 1:
            from scipy.stats import ttest_rel

            ref = np.array([reference["reference"][reference["seeds"].index(s)] for s in seeds])
            eng = np.array([out[name]["f1_complete"][str(s)] for s in seeds])
            p = float(ttest_rel(ref, eng).pvalue) if np.any(ref != eng) else None
            result.setdefault("parity_packed", {})[name] = {
                "reference_mean": float(ref.mean()), "engine_mean": float(eng.mean()),
                "p_value": None if p is None or np.isnan(p) else p, "max_abs_diff": float(np.max(np.abs(ref - eng))),
                "seeds": seeds}
    save()


_WORKER: dict = {}


def _init_worker(model, tokenizer, data, settings, device, threads):
    import multiprocessing

    # DataCollatorForLanguageModeling(seed=...) refuses to run in a process not named MainProcess
    # (it expects DataLoader workers); each pool worker is a plain process running whole seeds.
    multiprocessing.current_process().name = "MainProcess"
    torch.set_num_threads(threads)
    if isinstance(model, str):  # a save_pretrained directory: nothing big is pickled (/dev/shm is small in
        from transformers import AutoModelForMaskedLM  # containers), and the model is built the normal way

        model = AutoModelForMaskedLM.from_pretrained(model, dtype=torch.float32).eval()
    _WORKER.update(model=model, tokenizer=tokenizer, data=data, settings=settings, device=torch.device(device))


def _reference_task(task):
    from headprune.scoring import score_seed

    name, seed = task
    ids, labels = _WORKER["data"][name]
    score = score_seed(_WORKER["model"], _WORKER["tokenizer"], ids, labels, (), seed, _WORKER["settings"],
                       _WORKER["device"])
    return name, seed, score.f1


def parity(model, tokenizer, data: dict, args, settings: ScoreSettings, device: torch.device, result: dict,
           save) -> None:
    """Reference (`scoring.score_seed`, one seed at a time) vs engine, paired by seed, per dataset."""
    from scipy.stats import ttest_rel

    entry = result["models"].setdefault("minilm", {})
    engine = entry.get("engine", {})
    options = EngineOptions(max_models=args.max_models)
    engine_f1: dict[str, dict[int, float]] = {}
    for name in args.parity_datasets:
        have = {int(s): f for s, f in engine.get(name, {}).get("f1", {}).items()}
        if not set(args.parity_seeds) <= set(have):
            scores = score_seeds_batched(model, tokenizer, *data[name], (), args.parity_seeds, settings, device,
                                         options)
            have.update({s: sc.f1 for s, sc in zip(args.parity_seeds, scores)})
        engine_f1[name] = {s: have[s] for s in args.parity_seeds}
    log(f"parity: engine scores ready; reference ({len(args.parity_datasets)} datasets x {len(args.parity_seeds)} "
        f"seeds, {args.parity_workers} workers)")
    tasks = [(name, seed) for name in args.parity_datasets for seed in args.parity_seeds]
    reference: dict[str, dict[int, float]] = {name: {} for name in args.parity_datasets}
    start = time.perf_counter()
    if args.parity_workers > 1:
        import tempfile

        import torch.multiprocessing as mp

        threads = max(1, (os.cpu_count() or 2) // args.parity_workers)
        context = mp.get_context("spawn")
        saved = tempfile.TemporaryDirectory(prefix="headprune-bench-")
        model.save_pretrained(saved.name)
        with saved, context.Pool(args.parity_workers, initializer=_init_worker,
                                 initargs=(saved.name, tokenizer, {n: data[n] for n in args.parity_datasets},
                                           settings, str(device), threads)) as pool:
            for name, seed, f1 in pool.imap_unordered(_reference_task, tasks):
                reference[name][seed] = f1
    else:
        _init_worker(model, tokenizer, data, settings, str(device), torch.get_num_threads())
        for task in tasks:
            name, seed, f1 = _reference_task(task)
            reference[name][seed] = f1
    log(f"parity: reference took {time.perf_counter() - start:.1f} s")
    out = result.setdefault("parity", {})
    for name in args.parity_datasets:
        ref = np.array([reference[name][s] for s in args.parity_seeds])
        eng = np.array([engine_f1[name][s] for s in args.parity_seeds])
        p = float(ttest_rel(ref, eng).pvalue) if len(ref) > 1 and np.any(ref != eng) else None
        out[name] = {"reference_mean": float(ref.mean()), "engine_mean": float(eng.mean()),
                     "p_value": None if p is None or np.isnan(p) else p,
                     "max_abs_diff": float(np.max(np.abs(ref - eng))), "seeds": args.parity_seeds,
                     "reference": ref.tolist(), "engine": eng.tolist()}
        log(f"parity {name}: reference {ref.mean():.4f} engine {eng.mean():.4f} p={out[name]['p_value']} "
            f"max |diff| {out[name]['max_abs_diff']:.4f}")
    result["parity_reference"] = "headprune.scoring.score_seed (one seed at a time, fp32), same device"
    save()


# ----------------------------------------------------------------------------- main


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", help="MiniLM: 'minilm' (embedded) or a directory (.carry/minilm)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None, help="default: bench/results/<date>-<device>.json")
    parser.add_argument("--merge", default=None, help="start from this earlier result JSON")
    parser.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                        help="only merge these result files (in order) into --out; runs nothing")
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: 2 datasets, 2 seeds, 80 rows, 1 epoch")
    parser.add_argument("--models", default="minilm,bertweet-shape")
    parser.add_argument("--parts", default="throughput,parity")
    parser.add_argument("--datasets", default="G2")
    parser.add_argument("--naive-datasets", default=None, help="default: --datasets")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--seeds", default="1-10")
    parser.add_argument("--parity-datasets", default=None, help="default: --datasets")
    parser.add_argument("--parity-seeds", default=None, help="default: --seeds")
    parser.add_argument("--parity-workers", type=int, default=None, help="reference processes (default 8 on CUDA)")
    parser.add_argument("--max-rows", type=int, default=None, help="subsample each dataset (stratified)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--warmup-steps", type=int, default=None, help="MiniLM MLM-head warm-up (default 300)")
    parser.add_argument("--cache-dir", default=None, help="where the warmed-up MLM head is cached (default: none)")
    parser.add_argument("--max-models", type=int, default=None, help="engine: models trained together at most")
    parser.add_argument("--pack-models", type=int, default=None, help="packed: models per pack (default: what fits)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-deterministic", action="store_true",
                        help="CUDA: let kernels be non-deterministic (headprune run is deterministic by default)")
    return parser


def resolve_args(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    """Fill in the defaults that depend on --quick and the device; lists for datasets and seeds;
    `args.settings`, the ScoreSettings of the run."""
    if args.quick:
        args.datasets = "person,hobbit" if args.datasets == "G2" else args.datasets
        args.seeds = "1-2" if args.seeds == "1-10" else args.seeds
        args.max_rows = args.max_rows or 80
        args.epochs = args.epochs or 1
        args.warmup_steps = 10 if args.warmup_steps is None else args.warmup_steps
    args.datasets = expand_datasets(args.datasets)
    args.naive_datasets = expand_datasets(args.naive_datasets) if args.naive_datasets else args.datasets
    args.parity_datasets = expand_datasets(args.parity_datasets) if args.parity_datasets else args.datasets
    args.seeds = parse_seeds(args.seeds)
    args.parity_seeds = parse_seeds(args.parity_seeds) if args.parity_seeds else args.seeds
    args.warmup_steps = 300 if args.warmup_steps is None else args.warmup_steps
    if args.parity_workers is None:
        args.parity_workers = 8 if device.type == "cuda" else 1
    args.settings = ScoreSettings(epochs=args.epochs or ScoreSettings().epochs)
    return args


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)

    if args.combine:
        if not args.out:
            parser.error("--combine needs --out")
        combined: dict = {}
        for path in args.combine:
            deep_merge(combined, json.loads(Path(path).read_text()))
        write_json(args.out, combined)
        log(f"wrote {args.out} from {len(args.combine)} files")
        return 0

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = resolve_device(args.device)
    reproducible(device, not args.no_deterministic)
    settings = resolve_args(args, device).settings
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not set(models) <= {"minilm", "bertweet-shape"} or not parts <= {"throughput", "parity", "packed"}:
        parser.error("--models: minilm, bertweet-shape; --parts: throughput, parity, packed")

    today = date.today().isoformat()
    out = Path(args.out) if args.out else HERE / "results" / f"{today}-{device_slug(device)}.json"
    result: dict = json.loads(Path(args.merge).read_text()) if args.merge else {}
    result.update({
        "device": f"cuda: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "cpu",
        "date": today, "versions": versions(),
    })
    result.setdefault("models", {})
    if args.quick or args.max_rows or device.type == "cpu":
        result["note"] = ("smoke run" + (" (--quick)" if args.quick else "") + f" on {result['device']}: "
                          + (f"datasets subsampled to {args.max_rows} rows, " if args.max_rows else "")
                          + f"{settings.epochs} epoch(s); timings and projections are not GPU benchmarks")
    result.setdefault("runs", []).append({
        "argv": sys.argv[1:], "quick": args.quick, "max_rows": args.max_rows, "datasets": args.datasets,
        "seeds": args.seeds, "settings": settings.as_dict(), "warmup_steps": args.warmup_steps,
        "max_models": args.max_models, "pack_models": args.pack_models, "deterministic": not args.no_deterministic,
        "models": models, "parts": sorted(parts),
    })

    def save() -> None:
        write_json(out, result)

    log(f"device {result['device']}; models {models}; parts {sorted(parts)}; datasets {args.datasets}; "
        f"seeds {args.seeds}; -> {out}")
    for key in models:
        model, tokenizer, n_heads, info = build_model(key, args, device)
        result["models"].setdefault(key, {}).update(info)
        limit = min(settings.max_length, max_length(tokenizer, model.config))
        names = sorted(set(args.datasets) | set(args.naive_datasets) |
                       (set(args.parity_datasets) if key == "minilm" and "parity" in parts else set()))
        data = load_encoded(names, tokenizer, limit, args)
        log(f"{key}: {count_parameters(model):,} parameters; datasets encoded (max {limit} tokens)")
        if "throughput" in parts:
            throughput(key, model, tokenizer, n_heads, data, args, settings, device, result, save)
        if key == "minilm" and "parity" in parts:
            parity(model, tokenizer, data, args, settings, device, result, save)
        if "packed" in parts:
            packed(key, model, tokenizer, n_heads, data, args, settings, device, result, save)
        del model
    save()
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
