"""The parts of the device check (bench/check.py): smoke, throughput-minilm, throughput-bertweet,
parity, determinism, each a function(context, recorder) that bench/harness.py runs in a process of
its own (the budgets, sizes and targets are check.py's)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))

from harness import NoDevice, Recorder  # noqa: E402

MATMUL_N = {"device": 8192, "rehearsal": 256}  # square bf16 matmuls timed for the matrix rate
OOM_LEAVE_BYTES = int(2.5 * 2**30)  # smoke: GPU memory left free, so that a pack of 16 MiniLMs runs out


# ----------------------------------------------------------------------------- what the parts share


@dataclass
class Setup:
    bench: object  # bench/engine.py
    torch: object
    device: object
    args: argparse.Namespace
    rehearsal: bool


def setup(context: dict, recorder: Recorder) -> Setup:
    """Imports, the device (deterministic kernels, as `headprune run`), bench/engine.py's options
    for this part's sizes; device and versions into the results."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import engine as bench
    import torch

    from headprune.devices import reproducible

    if context["device"] == "cuda" and not torch.cuda.is_available():
        raise NoDevice("CUDA is not available here (on CPU: bash bench/device.sh check-rehearsal)")
    device = torch.device(context["device"])
    reproducible(device, True)
    argv = ["--model", context["model"], "--data-dir", context["data_dir"], "--cache-dir", context["cache_dir"],
            "--device", context["device"], *context["options"]]
    args = bench.resolve_args(bench.make_parser().parse_args(argv), device)
    results = recorder.results
    results["device"] = f"cuda: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "cpu"
    results["versions"] = bench.versions()
    results.setdefault("models", {})
    results["runs"] = [{"part": context["part"], "argv": argv, "datasets": args.datasets, "seeds": args.seeds,
                        "max_rows": args.max_rows, "settings": args.settings.as_dict(),
                        "pack_models": args.pack_models, "deterministic": True}]
    recorder.save()
    bench.log(f"{context['part']} on {results['device']}: datasets {args.datasets}, seeds {args.seeds}, "
              f"{args.settings.epochs} epoch(s), rows {args.max_rows or 'all'}")
    return Setup(bench, torch, device, args, context["mode"] == "rehearsal")


def load(s: Setup, key: str, recorder: Recorder, names: list[str] | None = None):
    """(model, tokenizer, heads, encoded datasets) of 'minilm' or 'bertweet-shape'; its shape into
    the results."""
    from headprune.models import count_parameters, max_length

    model, tokenizer, n_heads, info = s.bench.build_model(key, s.args, s.device)
    config = model.config
    entry = recorder.results["models"].setdefault(key, {})
    entry.update(info)
    entry.update(n_params=count_parameters(model), n_heads=n_heads,
                 shape={"layers": config.num_hidden_layers, "heads": config.num_attention_heads,
                        "hidden": config.hidden_size, "intermediate": config.intermediate_size,
                        "vocab": config.vocab_size, "positions": config.max_position_embeddings})
    limit = min(s.args.settings.max_length, max_length(tokenizer, config))
    data = s.bench.load_encoded(names or s.args.datasets, tokenizer, limit, s.args)
    recorder.save()
    return model, tokenizer, n_heads, data


def measure_matmul(s: Setup, recorder: Recorder, n: int) -> None:
    """FLOP/s of square bf16 matmuls on the device: the matrix rate utilisation is counted against."""
    torch = s.torch
    a = torch.randn(n, n, device=s.device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=s.device, dtype=torch.bfloat16)

    def sync():
        if s.device.type == "cuda":
            torch.cuda.synchronize(s.device)

    for _ in range(3):
        a @ b
    sync()
    iterations, start = 0, time.perf_counter()
    while iterations < 10 or time.perf_counter() - start < 0.5:
        a @ b
        iterations += 1
        if iterations % 10 == 0:
            sync()
    sync()
    rate = 2 * n**3 * iterations / (time.perf_counter() - start)
    recorder.results["matmul_bf16"] = {"n": n, "iterations": iterations, "flops_per_s": rate}
    s.bench.log(f"bf16 matmul {n}x{n}: {rate / 1e12:.1f} TFLOP/s")


def layer_heads(layer: int, heads: int = 12) -> tuple:
    return tuple((layer, h) for h in range(heads))


SOME_HEADS = ((0, 1), (0, 2), (2, 5), (4, 11))


def check_f1s(scores) -> list[float]:
    f1s = [float(sc.f1) for sc in scores]
    if not all(0.0 <= f <= 1.0 for f in f1s):  # NaN fails the comparison too
        raise AssertionError(f"F1 outside [0, 1]: {f1s}")
    return f1s


# ----------------------------------------------------------------------------- the parts


def smoke(context: dict, recorder: Recorder) -> None:
    """Every CUDA path of the engine on two small datasets, a few steps each."""
    s = setup(context, recorder)
    torch, device, args = s.torch, s.device, s.args
    from headprune.engine import EngineOptions
    from headprune.engine.stages import SizeCache, score_pack, score_seeds_batched
    from headprune.tasks import SeedTask

    model, tokenizer, _, data = load(s, "minilm", recorder)
    out = recorder.results.setdefault("smoke", {})
    settings, seeds, names = args.settings, args.seeds, args.datasets
    amp = EngineOptions(amp=True)  # bf16 autocast: the CUDA default, forced on CPU to run that path

    def stacked():  # the complete model, and one physically pruned (heads, and a whole layer)
        for pruned, name in (((), names[0]), (SOME_HEADS + layer_heads(5), names[-1])):
            stats: dict = {}
            scores = score_seeds_batched(model, tokenizer, *data[name], pruned, seeds, settings, device, amp, stats)
            out.setdefault("stacked", {})[f"{name}, {len(pruned)} heads pruned"] = {
                "f1": check_f1s(scores), "tokens": stats["tokens"], "steps": stats["steps"],
                "adjust_seconds": stats["adjust_seconds"], "n_params": scores[0].n_params}
        out["stacked_peak_gpu_memory_bytes"] = s.bench.peak(device)

    candidates = [(), SOME_HEADS, layer_heads(3), tuple(sorted(SOME_HEADS + layer_heads(5)))]
    mixed = list(zip(names, seeds))  # (dataset, seed) pairs: packs of models of different datasets

    def packed():
        tasks = [SeedTask(p, n, seed) for p in candidates for n, seed in mixed]
        stats: dict = {}
        s.bench.reset_peak(device)
        scores = score_pack(model, tokenizer, {n: data[n] for n in names}, tasks, settings, device,
                            EngineOptions(pack=True, amp=True), stats, SizeCache(model))
        out["packed"] = {"n_models": len(tasks), "f1": check_f1s(scores), "tokens": stats["tokens"],
                         "steps": stats["steps"], "adjust_seconds": stats["adjust_seconds"],
                         "n_params": sorted({sc.n_params for sc in scores}),
                         "peak_gpu_memory_bytes": s.bench.peak(device)}

    def svm_kernel():
        import numpy as np
        from sklearn.model_selection import StratifiedKFold, cross_val_score
        from sklearn.svm import SVC

        from headprune.data import split_halves
        from headprune.engine import StackedMLM
        from headprune.engine.stages import features_stacked
        from headprune.scoring import svm_f1

        ids, labels = data[names[0]]
        rows = split_halves(labels, seeds[0])[1]
        x = features_stacked(StackedMLM.replicate(model, 1, device), [[ids[i] for i in rows]],
                             tokenizer.pad_token_id, settings)[0]
        if not np.isfinite(x).all():
            raise AssertionError("features are not finite")
        y = labels[rows]
        on_device = svm_f1(x, y, settings.n_folds, seeds[0], device)
        folds = StratifiedKFold(settings.n_folds, shuffle=True, random_state=seeds[0])
        libsvm = float(cross_val_score(SVC(class_weight="balanced"), x, y, cv=folds, scoring="f1_macro").mean())
        out["svm_kernel"] = {"device_kernel_f1": on_device, "libsvm_rbf_f1": libsvm,
                             "abs_diff": abs(on_device - libsvm), "features_shape": list(x.shape)}

    def batch_workers():
        import numpy as np

        from headprune.engine import BatchedExecutor
        from headprune.engine.batches import BatchPreparer, job_stream
        from headprune.engine.stages import task_jobs
        from headprune.tasks import EvalContext

        tasks = [SeedTask(p, n, seed) for p in candidates[:2] for n, seed in mixed]
        datasets = {n: data[n] for n in names}
        jobs = task_jobs(datasets, tasks)
        preparer = BatchPreparer(2)
        try:
            remote = [f.result(timeout=120) for f in preparer.prepare(tokenizer, jobs, settings)]
        finally:
            preparer.close()

        def same(a, b) -> bool:
            if a is None or b is None:
                return a is b
            return (a.lr == b.lr and all(np.array_equal(getattr(a, k), getattr(b, k))
                                         for k in ("input_ids", "attention", "positions", "targets")))

        local = [list(job_stream(tokenizer, ids, seed, settings)) for ids, seed in jobs]
        identical = all(len(r) == len(w) and all(map(same, r, w)) for r, w in zip(remote, local))
        out["batch_workers"] = {"jobs": len(jobs), "identical_to_in_process": identical}
        if not identical:
            raise AssertionError("batches drawn in worker processes differ from those drawn in process")
        executor = BatchedExecutor(EngineOptions(pack=True, pack_models=2, prep_workers=2, amp=True))
        try:
            results = dict(executor.run(EvalContext(model, tokenizer, datasets, settings, device), tasks))
        finally:
            executor.close()
        out["batch_workers"].update(executor_tasks=len(results), f1=check_f1s(results[t] for t in tasks))
        if set(results) != set(tasks):
            raise AssertionError(f"the executor answered {len(results)} of {len(tasks)} tasks")

    def oom_halving():
        from headprune.engine import BatchedExecutor
        from headprune.engine.stages import EngineStages, train_pack
        from headprune.tasks import EvalContext

        attempts: list[list] = []
        n_tasks = 4 if s.rehearsal else 16

        def counted(base_model, tok, datasets, part, *rest, **kwargs):
            attempts.append([len(part), "running"])
            if s.rehearsal and len(part) > n_tasks // 2:  # no GPU memory to run out of: the CUDA error, simulated
                attempts[-1][1] = "out of memory (simulated)"
                raise torch.cuda.OutOfMemoryError("simulated in the CPU rehearsal")
            try:
                trained = train_pack(base_model, tok, datasets, part, *rest, **kwargs)
            except torch.cuda.OutOfMemoryError:
                attempts[-1][1] = "out of memory"
                raise
            attempts[-1][1] = "ok"
            return trained

        tasks = [SeedTask((), names[0], seed) for seed in range(1, n_tasks + 1)]
        filler = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
            free, _ = torch.cuda.mem_get_info(device)
            filler = torch.empty(max(0, free - OOM_LEAVE_BYTES), dtype=torch.uint8, device=device)
        executor = BatchedExecutor(EngineOptions(pack=True, pack_models=n_tasks, prep_workers=0, amp=True),
                                   EngineStages(train_pack=counted))
        try:
            results = dict(executor.run(EvalContext(model, tokenizer, {names[0]: data[names[0]]}, settings, device),
                                        tasks))
        finally:
            executor.close()
            del filler
            if device.type == "cuda":
                torch.cuda.empty_cache()
        out["oom_halving"] = {"left_free_bytes": OOM_LEAVE_BYTES if device.type == "cuda" else None,
                              "attempts": attempts, "answered": len(results), "f1": check_f1s(results.values())}
        if not any(status.startswith("out of memory") for _, status in attempts):
            raise AssertionError(f"no pack ran out of memory: the halving was not exercised ({attempts})")
        if set(results) != set(tasks):
            raise AssertionError(f"{len(results)} of {len(tasks)} tasks answered after halving")

    def roberta():
        from transformers import RobertaConfig, RobertaForMaskedLM

        from headprune.models import max_length

        torch.manual_seed(0)
        small = RobertaForMaskedLM(RobertaConfig(**{**s.bench.BERTWEET_SHAPE, "num_hidden_layers": 2,
                                                    "num_attention_heads": 4, "hidden_size": 64,
                                                    "intermediate_size": 128})).eval()
        limit = min(settings.max_length, max_length(tokenizer, small.config))
        encoded = s.bench.load_encoded(names[:1], tokenizer, limit, args)
        tasks = [SeedTask(p, names[0], seed) for p in ((), ((0, 0),), layer_heads(1, 4)) for seed in seeds]
        scores = score_pack(small, tokenizer, encoded, tasks, settings, device, EngineOptions(pack=True, amp=True))
        stacked = score_seeds_batched(small, tokenizer, *encoded[names[0]], ((0, 0),), seeds, settings, device, amp)
        out["roberta"] = {"packed_f1": check_f1s(scores), "stacked_f1": check_f1s(stacked),
                          "positions": small.config.max_position_embeddings}

    def self_check():  # what `run.engine = "auto"` runs on CUDA before trusting the engine with a run
        from headprune.engine import EngineOptions, self_check
        from headprune.models import max_length

        start = time.perf_counter()
        problem = self_check(model, tokenizer, device, EngineOptions(amp=True), max_length(tokenizer, model.config))
        out["self_check"] = {"passed": problem is None, "problem": problem,
                             "seconds": time.perf_counter() - start}
        if problem is not None:
            raise AssertionError(f"engine self-check: {problem}")

    for name, fn in (("self_check", self_check), ("stacked", stacked), ("packed", packed), ("svm_kernel", svm_kernel),
                     ("batch_workers", batch_workers), ("oom_halving", oom_halving), ("roberta", roberta)):
        recorder.step(name, fn)


def throughput_minilm(context: dict, recorder: Recorder) -> None:
    """MiniLM: the naive loop vs seed stacks vs packs; the bf16 matmul rate."""
    throughput(context, recorder, "minilm", ("naive", "packs", "stacks"))  # packs, the target, before stacks


def throughput_bertweet(context: dict, recorder: Recorder) -> None:
    """The BERTweet shape (random init): the naive loop vs packs; the bf16 matmul rate."""
    throughput(context, recorder, "bertweet-shape", ("naive", "packs"))


def throughput(context: dict, recorder: Recorder, key: str, kinds: tuple[str, ...]) -> None:
    s = setup(context, recorder)
    recorder.step("matmul_bf16", lambda: measure_matmul(s, recorder, MATMUL_N[context["mode"]]))
    recorder.step("g2_rows", lambda: g2_rows(s, recorder))
    model, tokenizer, n_heads, data = load(s, key, recorder)
    if key == "bertweet-shape":
        def shape():
            n = recorder.results["models"][key]["n_params"]
            if n != s.bench.BERTWEET_PARAMS:
                raise AssertionError(f"the BERTweet shape has {n:,} parameters, not {s.bench.BERTWEET_PARAMS:,}")

        recorder.step("parameters", shape)
    functions = {"naive": s.bench.naive_throughput, "stacks": s.bench.stacks_throughput, "packs": s.bench.packed}
    for kind in kinds:
        recorder.step(kind, lambda fn=functions[kind]: fn(key, model, tokenizer, n_heads, data, s.args,
                                                          s.args.settings, s.device, recorder.results, recorder.save))


def g2_rows(s: Setup, recorder: Recorder) -> None:
    from headprune.data import GROUPS, load_dataset

    recorder.results["g2_rows"] = {n: len(load_dataset(n, data_dir=s.args.data_dir).labels) for n in GROUPS["G2"]}


def parity(context: dict, recorder: Recorder) -> None:
    """Reference vs seed stacks (paired by seed), then vs packs of the complete model and others."""
    s = setup(context, recorder)
    names = sorted(set(s.args.parity_datasets) | set(s.args.datasets))
    model, tokenizer, n_heads, data = load(s, "minilm", recorder, names)
    args, save = s.args, recorder.save
    recorder.step("stacks_vs_reference", lambda: s.bench.parity(model, tokenizer, data, args, args.settings,
                                                                s.device, recorder.results, save))
    def packs():  # in a result of its own: these small packs must not replace throughput-minilm's packs
        apart = {"models": {}, "parity": recorder.results.get("parity", {})}

        def keep():
            recorder.results["parity_packed"] = apart.get("parity_packed", {})
            recorder.results["parity_packs"] = apart["models"].get("minilm", {}).get("packed", {})
            save()

        s.bench.packed("minilm", model, tokenizer, n_heads, data, args, args.settings, s.device, apart, keep)

    recorder.step("packs_vs_reference", packs)


def determinism(context: dict, recorder: Recorder) -> None:
    """One pack trained twice in one process: the same F1s to the last bit."""
    s = setup(context, recorder)
    from headprune.engine import EngineOptions
    from headprune.engine.stages import SizeCache, score_pack
    from headprune.tasks import SeedTask

    model, tokenizer, _, data = load(s, "minilm", recorder)
    name = s.args.datasets[0]
    candidates = [(), SOME_HEADS, layer_heads(3), tuple(sorted(SOME_HEADS + layer_heads(5)))]
    tasks = [SeedTask(p, name, seed) for p in candidates for seed in s.args.seeds]
    sizes = SizeCache(model)

    def twice():
        runs = []
        for _ in range(2):
            start = time.perf_counter()
            scores = score_pack(model, tokenizer, {name: data[name]}, tasks, s.args.settings, s.device,
                                EngineOptions(pack=True), None, sizes)
            runs.append({"f1": [float(sc.f1) for sc in scores], "seconds": time.perf_counter() - start})
        recorder.results["determinism"] = {
            "dataset": name, "n_models": len(tasks), "first": runs[0], "second": runs[1],
            "identical": runs[0]["f1"] == runs[1]["f1"],
            "deterministic_algorithms": bool(s.torch.are_deterministic_algorithms_enabled())}
        s.bench.log(f"determinism: {len(tasks)} models twice, identical F1s: {runs[0]['f1'] == runs[1]['f1']}")

    recorder.step("one_pack_twice", twice)


# ----------------------------------------------------------------------------- derived numbers

