"""The device check (issue 17): the batched engine's CUDA paths, its throughput against the naive
loop, its F1 parity with the reference and its determinism, in one command of at most 5 minutes
of wall time on the GPU machine (one H200).

    bash bench/device.sh check              # on the GPU machine: python3 bench/check.py --out "$OUT"
    bash bench/device.sh check-rehearsal    # the same parts on CPU with tiny sizes (--cpu-rehearsal)
    python3 bench/check.py --parts parity   # a subset (e.g. a rerun after a fix)

Each part runs in a process of its own, with a wall-clock budget (its time box): a part still
running at the end of its budget gets every thread's Python stack dumped into the log
(faulthandler), is killed with its worker processes and recorded as `timed_out`, with what it had
recorded until then; the next part still runs. `check.json` in --out is rewritten when each part
starts and when it ends (device, versions, date; per part its status, ok / failed / timed_out,
with the exception's type, message and traceback, and what it measured, in bench/engine.py's
schema: `models.<key>.*_tokens_per_s`, `parity.<dataset>`, ...); `check.log` beside it holds
every line the parts printed, tracebacks included; `parts/<part>.json` is each part's own record,
written as it goes. A crash on the device can so be diagnosed, fixed and rehearsed on CPU.

Parts and their budgets on the H200 (280 s in all, under the 5 minutes with the start-up of each
process counted in its part). Sizes are chosen from ../shared/PERF_NOTES.md's H100 speeds (naive
MiniLM 11.9k tokens/s, naive BERTweet shape 8.6k; MiniLM stacks of 16-64 models 98k-278k tokens/s;
tweets ~27.5 tokens; person: 440 rows, half of them adjusted on, 4 epochs, ~25k tokens a model):

- smoke, 50 s: every CUDA path on person and hobbit subsampled to 96 rows, 1 epoch, seeds 1-2:
  the engine's self-check (what `run.engine = "auto"` runs on CUDA before a run), seed stacks
  (physically pruned too), packs (masked stacks, a removed layer), bf16 autocast, the fused AdamW,
  features, the GPU SVM kernel against libsvm, batches drawn in worker processes
  (checked against in-process ones), the halving of a pack that runs out of memory (a real OOM:
  the GPU filled but 2.5 GiB), a small RoBERTa (its position ids).
- throughput-minilm, 75 s: the bf16 matmul rate; MiniLM's naive loop (seed 1) vs packs (6
  candidates x 10 seeds, packs of 64; `headprune run` would take 128) vs seed stacks (seeds 1-10)
  on person and hobbit, 4 epochs: ~7 s + ~35 s + ~10 s.
- throughput-bertweet, 55 s: the BERTweet shape (random init, 134,965,505 parameters), naive
  (seed 1) vs packs (3 candidates x 10 seeds: 30 models) on person: ~5 s + ~25 s.
- parity, 65 s: the reference (`scoring.score_seed`, in 5 processes) vs seed stacks, then vs
  packs, on person and hobbit x seeds 1-5 (paired t-tests): ~40 s.
- determinism, 35 s: one pack (4 candidates x 2 seeds on person) trained twice in one process:
  identical F1s.

Derived at the end (and recomputed from the JSON alone by `derive`): FLOPs per trained token and
the utilisation of the measured bf16 matmul rate, the targets of issue 17, an H1-over-G2 GPU-hour
estimate. Exit status 0 when every part is ok.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))

from record import deep_merge, write_json

PART_NAMES = ("smoke", "throughput-minilm", "throughput-bertweet", "parity", "determinism")
BUDGETS = {  # seconds of wall time per part, its process's start-up included
    "device": {"smoke": 50, "throughput-minilm": 75, "throughput-bertweet": 55, "parity": 65, "determinism": 35},
    # 2 shared CPU cores: importing torch alone takes ~10 s there
    "rehearsal": {"smoke": 600, "throughput-minilm": 360, "throughput-bertweet": 420, "parity": 420,
                  "determinism": 240},
}
SIZES = {  # bench/engine.py options per part
    "device": {
        "smoke": ["--datasets", "person,hobbit", "--seeds", "1-2", "--max-rows", "96", "--epochs", "1"],
        "throughput-minilm": ["--datasets", "person,hobbit", "--seeds", "1-10", "--pack-models", "64"],
        "throughput-bertweet": ["--datasets", "person", "--seeds", "1-10", "--pack-models", "30"],
        "parity": ["--datasets", "person,hobbit", "--seeds", "1-5", "--parity-workers", "5", "--pack-models", "10"],
        "determinism": ["--datasets", "person", "--seeds", "1-2"],
    },
    "rehearsal": {
        "smoke": ["--datasets", "person,hobbit", "--seeds", "1-2", "--max-rows", "40", "--epochs", "1"],
        "throughput-minilm": ["--datasets", "person", "--seeds", "1-2", "--max-rows", "48", "--epochs", "1",
                              "--pack-models", "4"],
        "throughput-bertweet": ["--datasets", "person", "--seeds", "1", "--max-rows", "40", "--epochs", "1",
                                "--pack-models", "2"],
        "parity": ["--datasets", "person,hobbit", "--seeds", "1-3", "--max-rows", "40", "--epochs", "1",
                   "--parity-workers", "2", "--pack-models", "6"],
        "determinism": ["--datasets", "person", "--seeds", "1-2", "--max-rows", "40", "--epochs", "1"],
    },
}
MATMUL_N = {"device": 8192, "rehearsal": 256}  # square bf16 matmuls timed for the matrix rate
OOM_LEAVE_BYTES = int(2.5 * 2**30)  # smoke: GPU memory left free, so that a pack of 16 MiniLMs runs out
PAPER_HEAD_CACHE = ROOT / "results" / "minilm-paper" / "run" / "cache" / "headprune"  # .carry/minilm's warmed head
TARGETS = {  # issue 17
    "minilm": {"speedup": 20.0, "tokens_per_s": 238_000},
    "bertweet-shape": {"speedup": 20.0, "tokens_per_s": 170_000},
}
H1_GPU_HOURS_TARGET = {"minilm": 1.0, "bertweet-shape": 4.0}


# ----------------------------------------------------------------------------- the part runner


@dataclass(frozen=True)
class Part:
    """A part of the check: `target` is a function of this file, or "path/to/file.py:function";
    it is called as target(context, recorder) in a process of its own."""

    name: str
    target: str
    budget_s: float
    options: list[str] = field(default_factory=list)  # bench/engine.py options (its sizes)


class Log:
    """Lines to the console and to check.log, from the parent and the parts' reader threads."""

    def __init__(self, path: Path):
        self.file = open(path, "w", encoding="utf-8", errors="replace")
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        with self.lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
            self.file.write(text + "\n")
            self.file.flush()

    def say(self, text: str) -> None:
        self.line(f"[{time.strftime('%H:%M:%S')}] check: {text}")

    def close(self) -> None:
        self.file.close()


def _copy_lines(stream, log: Log, prefix: str) -> None:
    for line in stream:
        log.line(f"{prefix}| {line.rstrip()}")


def _kill_group(proc: subprocess.Popen) -> None:
    """The part's process and everything it started (its session), if still there."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_part(part: Part, out_dir: Path, context: dict, log: Log) -> dict:
    """Run one part in its own process (session), killed past its budget. Returns its entry for
    check.json's "parts" plus "results", what it recorded."""
    parts_dir = out_dir / "parts"
    record_file = parts_dir / f"{part.name}.json"
    context_file = parts_dir / f"{part.name}.context.json"
    record_file.unlink(missing_ok=True)
    write_json(context_file, {**context, "part": part.name, "budget_s": part.budget_s, "options": part.options})
    command = [sys.executable, "-u", str(Path(__file__).resolve()), "--child", part.target,
               "--context", str(context_file), "--record", str(record_file)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True, env=env, cwd=os.getcwd())
    reader = threading.Thread(target=_copy_lines, args=(proc.stdout, log, part.name), daemon=True)
    reader.start()
    timed_out = False
    try:
        try:
            code = proc.wait(timeout=part.budget_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            log.say(f"{part.name}: past its budget of {part.budget_s:g} s: its stacks, then it is stopped")
            proc.send_signal(signal.SIGUSR1)  # faulthandler: every thread's Python stack into the log
            time.sleep(1)  # the dump is written at once; give the reader a moment
            _kill_group(proc)
            code = proc.wait()
    finally:
        _kill_group(proc)  # worker processes it left (batch preparers, reference pools) go too
    reader.join(timeout=5)
    seconds = time.monotonic() - start
    try:
        record = json.loads(record_file.read_text())
    except (OSError, ValueError):
        record = {}
    entry = {"status": record.get("status", "failed"), "seconds": round(seconds, 2), "budget_s": part.budget_s,
             "exit_code": code, "steps": record.get("steps", {})}
    if timed_out:
        entry["status"] = "timed_out"
        entry["error"] = {"type": "TimeoutError",
                          "message": f"still running after its budget of {part.budget_s:g} s: stopped "
                                     f"(its stacks at that moment are in check.log)"}
    elif record.get("error"):
        entry["error"] = record["error"]
    elif entry["status"] != "ok" or code != 0:
        entry["status"] = "failed"
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        entry["error"] = {"type": "ProcessDied", "message": f"the part's process ended ({how}) without a record"}
    entry["results"] = record.get("results", {})
    return entry


def run_check(parts: list[Part], out_dir: str | Path, context: dict, header: dict | None = None) -> dict:
    """Run `parts` in order, each in its time box; check.json is written before the first, when
    each starts and after each; check.log holds everything they printed. Returns check.json's content."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "check.json"
    log = Log(out_dir / "check.log")
    result: dict = {**(header or {}), "status": "running",
                    "parts": {p.name: {"status": "pending", "budget_s": p.budget_s} for p in parts}}
    start = time.monotonic()

    def save() -> None:
        result["wall_seconds"] = round(time.monotonic() - start, 2)
        write_json(json_path, result)

    def stop(signum, frame):  # the caller's time limit: the part's processes must not outlive us
        raise SystemExit(f"check stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() else None
    save()
    try:
        for i, part in enumerate(parts):
            result["parts"][part.name]["status"] = "running"
            save()
            log.say(f"{part.name}: started (budget {part.budget_s:g} s)")
            entry = run_part(part, out_dir, context, log)
            deep_merge(result, entry.pop("results"))
            result["parts"][part.name] = entry
            try:
                derive(result)
            except Exception:  # a bug in the arithmetic must not cost the measurements
                log.line(traceback.format_exc().rstrip())
            save()
            error = entry.get("error")
            log.say(f"{part.name}: {entry['status']} in {entry['seconds']:.1f} s"
                    + (f" ({error['type']}: {error['message'][:300]})" if error else ""))
            if error and error.get("type") == "NoDevice":
                for later in parts[i + 1:]:
                    result["parts"][later.name].update(status="skipped", error=error)
                break
        statuses = [p["status"] for p in result["parts"].values()]
        result["status"] = "ok" if all(s == "ok" for s in statuses) else "failed"
        save()
        log.say(f"{result['status']}: " + ", ".join(f"{n} {p['status']}" for n, p in result["parts"].items())
                + f"; {result['wall_seconds']:.0f} s; {json_path}")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if result["status"] == "running":
            result["status"] = "interrupted"
            save()
        log.close()
    return result


# ----------------------------------------------------------------------------- a part's process


class NoDevice(RuntimeError):
    """The check was asked for CUDA where there is none: the later parts are skipped."""


class Recorder:
    """What a part records: `results` (merged into check.json, bench/engine.py's schema) and its
    `steps`; `save()` rewrites the part's record file (the parent reads it even after a kill)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.results: dict = {}
        self.steps: dict = {}
        self.status = "running"
        self.error: dict | None = None
        self.start = time.monotonic()

    def save(self) -> None:
        write_json(self.path, {"status": self.status, "error": self.error, "steps": self.steps,
                               "results": self.results, "seconds": round(time.monotonic() - self.start, 2)})

    def step(self, name: str, fn: Callable[[], object]) -> bool:
        """Run one step of the part: an exception is logged with its traceback and recorded, and
        the part goes on with its next step (the part is then failed). True if it succeeded."""
        print(f"[{time.strftime('%H:%M:%S')}] step {name}", flush=True)
        self.steps[name] = {"status": "running"}
        self.save()
        start = time.monotonic()
        try:
            fn()
            self.steps[name] = {"status": "ok", "seconds": round(time.monotonic() - start, 2)}
            ok = True
        except Exception as err:
            traceback.print_exc()
            self.steps[name] = {"status": "failed", "seconds": round(time.monotonic() - start, 2),
                                "error": error_of(err)}
            ok = False
        self.save()
        return ok

    def finish(self, err: BaseException | None = None) -> int:
        if err is not None:
            self.status, self.error = "failed", error_of(err)
        else:
            failed = [n for n, s in self.steps.items() if s["status"] != "ok"]
            self.status = "failed" if failed else "ok"
            if failed:
                first = self.steps[failed[0]]["error"]
                self.error = {**first, "step": failed[0], "failed_steps": failed}
        self.save()
        return 0 if self.status == "ok" else 1


def error_of(err: BaseException) -> dict:
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return {"type": type(err).__name__, "message": str(err)[:2000], "traceback": text[-6000:]}


def child_main(target: str, context_file: str, record_file: str) -> int:
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    recorder = Recorder(record_file)
    recorder.save()
    try:
        context = json.loads(Path(context_file).read_text())
        if ":" in target:
            path, name = target.rsplit(":", 1)
            spec = importlib.util.spec_from_file_location(Path(path).stem, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            fn = getattr(module, name)
        else:
            fn = globals()[target]
        fn(context, recorder)
    except BaseException as err:  # SystemExit and KeyboardInterrupt included: recorded, then exit 1
        traceback.print_exc()
        return recorder.finish(err)
    return recorder.finish()


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


def train_flops_per_token(shape: dict, width: int = 32, mask_rate: float = 0.15) -> float:
    """FLOPs of continued MLM per real token, as the engine trains (logits at masked tokens only):
    forward 2 and backward 4 FLOPs per multiply-add of the encoder's linear layers, of attention
    over rows of `width` tokens, and of the MLM head (dense + decoder) at the masked 15%. MiniLM:
    ~75 MFLOP; the BERTweet shape: ~0.56 GFLOP. Memory-bound work (embedding gradients, AdamW,
    layer norms) is not counted."""
    h, i, layers, v = shape["hidden"], shape["intermediate"], shape["layers"], shape["vocab"]
    multiply_adds = layers * (4 * h * h + 2 * h * i + 2 * width * h) + mask_rate * (h * h + h * v)
    return 6.0 * multiply_adds


def derive(result: dict) -> None:
    """Numbers computed from the measurements alone (so also from a check.json on CPU later):
    FLOPs per token and utilisation of the measured bf16 matmul rate, an H1-over-G2 GPU-hour
    estimate, the targets of issue 17."""
    rate = (result.get("matmul_bf16") or {}).get("flops_per_s")
    models = result.get("models", {})
    for entry in models.values():
        if "shape" not in entry:
            continue
        flops = train_flops_per_token(entry["shape"])
        use = {"flops_per_token": flops, "matmul_bf16_flops_per_s": rate}
        for part in ("naive", "engine", "packed"):
            tps = tokens_per_s(entry, part)
            if tps and rate:
                use[part] = tps * flops / rate
        if rate:
            use["tokens_per_s_at_matmul_rate"] = rate / flops
        entry["utilisation"] = use
    estimate_h1_hours(result)
    result["targets"] = targets(result)


def tokens_per_s(entry: dict, part: str) -> float | None:
    """A model's `<part>_tokens_per_s` ("naive", "engine": seed stacks, "packed"), or, where a part
    was stopped before its summary, the same from the datasets it finished."""
    if entry.get(f"{part}_tokens_per_s"):
        return entry[f"{part}_tokens_per_s"]
    runs = [r for r in entry.get(part, {}).values() if isinstance(r, dict) and r.get("adjust")]
    return sum(r["tokens"] for r in runs) / sum(r["adjust"] for r in runs) if runs else None


def estimate_h1_hours(result: dict) -> None:
    """H1 over all of G2 (every k of N heads, 10 seeds) at the packed seconds per evaluation per
    row measured, scaled linearly to each G2 dataset's rows (the SVM grows faster than linearly)."""
    rows = result.get("g2_rows")
    if not rows:
        return
    out, basis = {}, {}
    for key, entry in result.get("models", {}).items():
        runs = {n: r for n, r in entry.get("packed", {}).items() if r.get("rows")}
        if not runs or not entry.get("n_heads"):
            continue
        per_row = sum(r["wall"] / r["n_models"] / r["rows"] for r in runs.values()) / len(runs)
        out[key] = entry["n_heads"] * 10 * per_row * sum(rows.values()) / 3600
        measured = ", ".join(f"{n} ({r['rows']} rows)" for n, r in sorted(runs.items()))
        basis[key] = (f"{entry['n_heads']} heads x 10 seeds x the {len(rows)} G2 datasets ({sum(rows.values())} rows), "
                      f"at {per_row * 1e3:.3f} ms per evaluation per dataset row, measured in packs on {measured}")
    if out:
        result["projected_h1_g2_gpu_hours_estimate"] = out
        result["projection_basis_estimate"] = basis


def targets(result: dict) -> dict:
    """Issue 17's targets, each {value, target, met} (met None: not measured)."""
    out: dict = {}
    models = result.get("models", {})
    for key, want in TARGETS.items():
        entry = models.get(key, {})
        naive, packed = tokens_per_s(entry, "naive"), tokens_per_s(entry, "packed")
        speedup = packed / naive if naive and packed else None
        for name, value, goal in (("speedup_packed_tokens_per_s", speedup, want["speedup"]),
                                  ("packed_tokens_per_s", packed, want["tokens_per_s"])):
            out[f"{key}.{name}"] = {"value": value, "target": f">= {goal:g}",
                                    "met": None if value is None else value >= goal}
        hours = result.get("projected_h1_g2_gpu_hours_estimate", {}).get(key)
        out[f"{key}.projected_h1_g2_gpu_hours"] = {"value": hours, "target": f"<= {H1_GPU_HOURS_TARGET[key]:g}",
                                                   "met": None if hours is None else hours <= H1_GPU_HOURS_TARGET[key]}
    for section in ("parity", "parity_packed"):
        for name, entry in result.get(section, {}).items():
            p = entry.get("p_value")
            out[f"{section}.{name}.p_value"] = {"value": p, "target": "> 0.05",
                                                "met": None if p is None else p > 0.05}
    if "determinism" in result:
        out["determinism.identical"] = {"value": result["determinism"]["identical"], "target": "true",
                                        "met": result["determinism"]["identical"]}
    out_of_memory = [f"{name}.{step}" for name, part in result.get("parts", {}).items()
                     for step, entry in {"": part, **part.get("steps", {})}.items()
                     if "OutOfMemory" in str((entry.get("error") or {}).get("type"))
                     and f"{name}.{step}" != "smoke.oom_halving"]  # out of memory on purpose
    out["no_out_of_memory"] = {"value": out_of_memory, "target": "[]", "met": not out_of_memory}
    return out


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/headprune-out"),
                        help="folder of check.json and check.log (default: $OUT)")
    parser.add_argument("--cpu-rehearsal", action="store_true", help="on CPU, with tiny sizes")
    parser.add_argument("--model", default=".carry/minilm")
    parser.add_argument("--data-dir", default=".carry/data")
    parser.add_argument("--parts", default=",".join(PART_NAMES), help=f"a subset of {','.join(PART_NAMES)}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--context", help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child, args.context, args.record)

    names = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not names or not set(names) <= set(PART_NAMES):
        parser.error(f"--parts: a subset of {','.join(PART_NAMES)}")
    for option, path in (("--model", args.model), ("--data-dir", args.data_dir)):
        if not Path(path).is_dir():  # before any part spends its start-up on it
            parser.error(f"{option} {path}: no such folder (carry .carry/minilm and .carry/data, made by "
                         "../shared/tools/prepare-device-carry.sh --carry-data)")
    mode = "rehearsal" if args.cpu_rehearsal else "device"
    cache = Path(tempfile.mkdtemp(prefix="headprune-check-"))
    for head in PAPER_HEAD_CACHE.glob("mlm-head-*.safetensors"):  # no warm-up where the paper run's head fits
        shutil.copy2(head, cache)
    context = {"mode": mode, "device": "cpu" if args.cpu_rehearsal else "cuda",
               "model": str(Path(args.model).resolve()), "data_dir": str(Path(args.data_dir).resolve()),
               "cache_dir": str(cache)}
    parts = [Part(name, name.replace("-", "_"), BUDGETS[mode][name], SIZES[mode][name]) for name in names]
    header = {"kind": "device check (bench/check.py)", "rehearsal": args.cpu_rehearsal,
              "command": "bash bench/device.sh " + ("check-rehearsal" if args.cpu_rehearsal else "check"),
              "date": date.today().isoformat(), "budget_s": {p.name: p.budget_s for p in parts},
              "total_budget_s": sum(p.budget_s for p in parts), "sizes": {p.name: p.options for p in parts}}
    if args.cpu_rehearsal:
        header["note"] = ("CPU rehearsal: every part with tiny sizes (subsampled datasets, 1 epoch, 2-3 seeds, "
                          "a simulated out-of-memory); it shows that nothing but CUDA can fail on the device. "
                          "Its timings, tokens/s, utilisation and projections are not GPU numbers.")
    try:
        result = run_check(parts, args.out, context, header)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
