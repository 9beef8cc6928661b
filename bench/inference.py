"""Benchmark: CPU inference of the complete and of pruned MiniLM encoders, PyTorch eager against
onnxruntime, measured side by side in one process.

    python bench/inference.py                       # writes bench/results/<date>-cpu-inference.json
    python bench/inference.py --pause PID --out FILE

Models: the embedded MiniLM (6 layers x 12 heads) complete (CM); 24, 36 and 48 heads pruned as the
least important of the seeded random order A1 (`importance.random_order(6, 12, seed=1)`, the
dissertation's first random baseline: R24 is inside R36, inside R48); layer 5 removed whole (L5,
12 heads) and layers 4 and 5 removed (L45, 24 heads: as many heads as R24, in two whole layers).
Each is the encoder a user deploys (`deploy.graph_of(model, "encoder")`: input_ids, attention_mask
-> last_hidden_state), in PyTorch eager and exported to ONNX (`deploy.export_onnx`, which checks
onnxruntime against PyTorch), in onnxruntime with the same number of intra-op threads and spinning
off (`deploy.OnnxModel`).

Inputs: tweets of the bundled dataset `person`, preprocessed and tokenized as `headprune predict`
does; batch 1 is the tweet of median token length, batch 32 the dataset's first 32 tweets padded to
the longest. Protocol (`speed.measure`): rounds in which every (model, runtime) in turn gets 5 timed
batch-1 calls and 1 timed batch-32 call, each after one warm-up call, so that a change of the
machine's load touches all alike; p50/p95 of the batch-1 calls, tweets/s of the median batch-32
call. Exports and checks happen before the measurement; `--pause PID` stops another process
(SIGSTOP) for the measurement alone and always resumes it (SIGCONT), for a shared machine.

Both runtimes are measured with each thread count of `--threads` (default 1 and 2), their threads
waiting passively (OMP_WAIT_POLICY=PASSIVE for PyTorch unless set otherwise, spinning off for
onnxruntime): on a shared 2-core machine 2 threads wait on each other whenever another process
holds a core, so the 1-thread numbers are the steadier comparison.

Keys: date, device, versions, settings, inputs, note, models.<name>.{pruned_heads, n_pruned,
kept_per_layer, n_layers, n_params, safetensors_bytes, onnx_bytes, max_abs_diff}, runs[] (one per
thread count).{threads, load_average.{before, after}, measure_seconds, models.<name>.{pytorch,
onnxruntime (p50_ms, p95_ms, per_second, batch_size, latency_samples, throughput_samples),
speedup.{pytorch_vs_complete_pytorch, onnxruntime_vs_complete_onnxruntime, onnxruntime_vs_pytorch,
onnxruntime_vs_complete_pytorch}.{batch_1_p50, batch_32}}}."""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import signal
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

# Before torch starts OpenMP: its threads wait passively, as onnxruntime's do here (spinning off). A
# spinning thread on a machine with other work holds a core its partner needs: at the default policy
# 2 PyTorch threads took ~50x longer per MiniLM call on this 2-core machine when it was busy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import headprune
from headprune.checkpoint import saved_size
from headprune.data import load_dataset, preprocess
from headprune.deploy import ONNX_FILE, OnnxModel, check_export, export_onnx, graph_of, require
from headprune.importance.random import random_order
from headprune.models import count_parameters, max_length
from headprune.pipeline import versions
from headprune.scoring import encode
from headprune.speed import inference_inputs, load_average, measure
from headprune.surgery import kept_heads, original_shape

RUNTIMES = ("pytorch", "onnxruntime")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def model_heads(n_layers: int = 6, n_heads: int = 12, seed: int = 1) -> dict[str, list[tuple[int, int]]]:
    """{model name: pruned heads}: CM, the A1 prefixes R24/R36/R48, and the whole-layer L5, L45."""
    order = random_order(n_layers, n_heads, seed=seed)
    heads = {"CM": []}
    heads.update({f"R{k}": order.least_important(k) for k in (24, 36, 48)})
    last = n_layers - 1
    heads[f"L{last}"] = [(last, h) for h in range(n_heads)]
    heads[f"L{last - 1}{last}"] = [(layer, h) for layer in (last - 1, last) for h in range(n_heads)]
    return heads


def bench_inputs(tokenizer, config):
    """(batch 1: the tweet of median token length, batch 32: the first 32 tweets) of `person`."""
    texts = [preprocess(t) for t in load_dataset("person").texts]
    lengths = [len(ids) for ids in encode(tokenizer, texts, max_length(tokenizer, config))]
    median = texts[int(np.argsort(lengths)[len(lengths) // 2])]
    return inference_inputs(tokenizer, config, [median], 1)[0], inference_inputs(tokenizer, config, texts[:32])[1]


def paused(pid: int | None):
    """A context that SIGSTOPs `pid` and always SIGCONTs it (also on an exception or SIGTERM)."""
    import contextlib

    @contextlib.contextmanager
    def context():
        if pid is None:
            yield
            return
        previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        os.kill(pid, signal.SIGSTOP)
        log(f"paused process {pid}")
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)
            signal.signal(signal.SIGTERM, previous)
            log(f"resumed process {pid}")

    return context()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", help="base model (default: the embedded MiniLM)")
    parser.add_argument("--threads", default="1,2", help="intra-op threads of both runtimes, one measurement each")
    parser.add_argument("--rounds", type=int, default=40, help="at most this many rounds per thread count")
    parser.add_argument("--budget", type=float, default=75.0, help="seconds per thread count: no new round after")
    parser.add_argument("--pause", type=int, default=None, metavar="PID",
                        help="stop this process during the measurement (SIGSTOP, then SIGCONT)")
    parser.add_argument("--note", default="", help="recorded in the JSON (e.g. what else ran on the machine)")
    parser.add_argument("--out", default=None, help="default: bench/results/<date>-cpu-inference.json")
    args = parser.parse_args(argv)
    thread_counts = [int(t) for t in args.threads.split(",")]
    ort = require("onnxruntime")
    import onnx
    import onnxscript

    base, tokenizer = headprune.load_model(args.model)
    single, batch = bench_inputs(tokenizer, base.config)
    n_layers, n_heads = original_shape(base.config)
    result: dict = {
        "date": date.today().isoformat(),
        "device": f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "versions": {**versions(), "onnx": onnx.__version__, "onnxscript": onnxscript.__version__,
                     "onnxruntime": ort.__version__},
        "settings": {"base_model": args.model, "threads": thread_counts, "max_rounds": args.rounds,
                     "budget_seconds": args.budget, "latency_calls_per_round": 5, "batch_calls_per_round": 1,
                     "order": "A1 = importance.random_order(6, 12, seed=1)",
                     "onnx": "torch.onnx.export(dynamo=True); onnxruntime CPUExecutionProvider, default graph "
                             "optimisation (all), intra-op spinning off",
                     "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")},
        "inputs": {"dataset": "person", "batch_1_tokens": int(single[0].shape[1]),
                   "batch_32_padded_tokens": int(batch[0].shape[1]),
                   "batch_32_real_tokens": int(batch[1].sum())},
        "note": args.note,
        "models": {},
        "runs": [],
    }
    graphs, models = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, heads in model_heads(n_layers, n_heads).items():
            model = copy.deepcopy(base)
            if heads:
                headprune.prune_heads(model, heads)
            graphs[name] = graph_of(model, "encoder")
            path = export_onnx(model, tokenizer, Path(tmp) / f"{name}-{ONNX_FILE}", "encoder")
            models[name] = (path, model.config)
            kept = kept_heads(model)
            result["models"][name] = {
                "pruned_heads": [list(h) for h in heads],
                "n_pruned": len(heads),
                "kept_per_layer": {str(layer): len(kept.get(layer, [])) for layer in range(n_layers)},
                "n_layers": len(kept),
                "n_params": count_parameters(model),
                "safetensors_bytes": saved_size(model),
                "onnx_bytes": path.stat().st_size,
                "max_abs_diff": check_export(graphs[name], OnnxModel(path, model.config, "last_hidden_state"),
                                             tokenizer),
            }
            log(f"{name}: {len(heads)} heads pruned, {result['models'][name]['n_params']:,} parameters, exported")
        for threads in thread_counts:
            torch.set_num_threads(threads)
            forwards = {}
            for name, (path, config) in models.items():
                forwards[name, "pytorch"] = graphs[name]
                forwards[name, "onnxruntime"] = OnnxModel(path, config, "last_hidden_state", threads=threads)
            run: dict = {"threads": threads, "load_average": {"before": load_average()}}
            with paused(args.pause):
                started = time.perf_counter()
                speeds = measure(forwards, single, batch, rounds=args.rounds, latency_calls=5, batch_calls=1,
                                 budget_s=args.budget)
                run["measure_seconds"] = round(time.perf_counter() - started, 1)
                run["load_average"]["after"] = load_average()
            run["models"] = _run_models(speeds, list(models))
            result["runs"].append(run)
            log(f"{threads} thread(s), {run['measure_seconds']} s:")
            for name, entry in run["models"].items():
                log(f"{name:>4}: " + "  ".join(
                    f"{r} p50 {entry[r]['p50_ms']:7.2f} ms p95 {entry[r]['p95_ms']:7.2f} ms b32 "
                    f"{entry[r]['per_second']:7.1f}/s" for r in RUNTIMES))
    out = Path(args.out) if args.out else HERE / "results" / f"{result['date']}-cpu-inference.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out}")
    return 0


def _run_models(speeds: dict, names: list[str]) -> dict:
    """{model: {pytorch, onnxruntime (Speed as JSON), speedup}} of one measurement."""
    complete = {runtime: speeds["CM", runtime] for runtime in RUNTIMES}
    out = {}
    for name in names:
        own = {runtime: speeds[name, runtime] for runtime in RUNTIMES}
        out[name] = {
            **{runtime: own[runtime].to_json() for runtime in RUNTIMES},
            "speedup": {
                **{f"{r}_vs_complete_{r}": _ratios(complete[r], own[r]) for r in RUNTIMES},
                "onnxruntime_vs_pytorch": _ratios(own["pytorch"], own["onnxruntime"]),
                "onnxruntime_vs_complete_pytorch": _ratios(complete["pytorch"], own["onnxruntime"]),
            },
        }
    return out


def _ratios(reference, speed) -> dict:
    """How many times faster `speed` is than `reference`: p50 latency and batch-32 throughput."""
    return {"batch_1_p50": round(reference.p50_ms / speed.p50_ms, 3),
            "batch_32": round(speed.per_second / reference.per_second, 3)}


if __name__ == "__main__":
    sys.exit(main())
