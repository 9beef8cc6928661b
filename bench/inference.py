"""Benchmark: CPU inference of the complete and of pruned MiniLM encoders, PyTorch eager against
onnxruntime, measured side by side in one process; and the BERTweet shape, complete against the
dissertation's 68-heads-pruned MOIH1, next to MiniLM: inference and adjusting steps.

    python bench/inference.py                       # both parts: bench/results/<date>-cpu-inference.json
    python bench/inference.py --part bertweet --threads 1 --rounds 3
    python bench/inference.py --pause PID --out FILE

Part "minilm":

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

Part "bertweet" (PyTorch only: a 540 MB ONNX export per model would take longer than its
measurement): the BERTweet shape (bench/bertweet.py: random-init RoBERTa, vocab 64001, 12 x 12 heads,
hidden 768, 134,965,505 parameters) complete ("bertweet CM") and as MOIH1 ("bertweet MOIH1": the first
68 heads of the dissertation's order OI pruned by `headprune.prune_heads`, 8/9/6/5/9/8/7/4/0/2/1/9 per
layer), and the complete MiniLM ("minilm CM"), with the first of `--threads`. Inputs: random token ids
(< 30522, valid for both vocabularies), `--seq-len` tokens (default 64, a long tweet), no padding;
batch 1 and batch 32, measured by `speed.measure` as above; then the adjusting step (`scoring.adjust`,
masked-LM, batch 16 rows of `--seq-len` tokens, AdamW) of each model, side by side, one warm-up step
each and `--rounds` timed steps (`bertweet.adjusting_step_seconds`), median.

Keys: date, machine, versions, load_average.{before, after}, note, OMP_WAIT_POLICY; part minilm:
settings, inputs, models.<name>.{pruned_heads, n_pruned, kept_per_layer, n_layers, n_params,
safetensors_bytes, onnx_bytes, max_abs_diff}, runs[] (one per thread count).{threads,
load_average.{before, after}, measure_seconds, models.<name>.{pytorch, onnxruntime (p50_ms, p95_ms,
per_second, batch_size, latency_samples, throughput_samples), speedup.{pytorch_vs_complete_pytorch,
onnxruntime_vs_complete_onnxruntime, onnxruntime_vs_pytorch, onnxruntime_vs_complete_pytorch}.{batch_1_p50,
batch_32}}}; part bertweet: bertweet.{threads, seq_len, rounds, load_average, models.<name>.{pruned_heads,
kept_per_layer, n_params, inference (Speed), adjusting.{step_seconds, median_seconds}},
ratios.{moih1_vs_complete, complete_vs_minilm}.{batch_1_p50, batch_32, adjusting_step}} (time ratios: < 1 is faster)."""

from __future__ import annotations

import argparse
import copy
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Before torch starts OpenMP: its threads wait passively, as onnxruntime's do here (spinning off). A
# spinning thread on a machine with other work holds a core its partner needs: at the default policy
# 2 PyTorch threads took ~50x longer per MiniLM call on this 2-core machine when it was busy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from record import finish, stamp

import headprune
from headprune.checkpoint import saved_size
from headprune.data import load_dataset, preprocess
from headprune.deploy import ONNX_FILE, OnnxModel, check_export, export_onnx, graph_of, require
from headprune.importance.random import random_order
from headprune.models import count_parameters, max_length
from headprune.scoring import encode, pruned_copy
from headprune.speed import inference_inputs, load_average, measure
from headprune.surgery import kept_heads, original_shape

RUNTIMES = ("pytorch", "onnxruntime")
PARTS = ("minilm", "bertweet")
MINILM_VOCAB = 30522  # random ids below it are valid for both MiniLM's and BERTweet's vocabularies


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
    parser.add_argument("--part", action="append", choices=PARTS, help="what to measure (repeat; default: both)")
    parser.add_argument("--model", default="minilm", help="base model (default: the embedded MiniLM)")
    parser.add_argument("--threads", default="1,2", help="intra-op threads of both runtimes, one measurement each")
    parser.add_argument("--rounds", type=int, default=40, help="at most this many rounds per thread count")
    parser.add_argument("--budget", type=float, default=75.0, help="seconds per thread count: no new round after")
    parser.add_argument("--seq-len", type=int, default=64, help="part bertweet: tokens per input row")
    parser.add_argument("--pause", type=int, default=None, metavar="PID",
                        help="stop this process during the measurement (SIGSTOP, then SIGCONT)")
    parser.add_argument("--note", default="", help="recorded in the JSON (e.g. what else ran on the machine)")
    parser.add_argument("--out", default=None, help="default: bench/results/<date>-cpu-inference.json")
    args = parser.parse_args(argv)
    thread_counts = [int(t) for t in args.threads.split(",")]
    result: dict = {**stamp(), "note": args.note, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
    parts = args.part or list(PARTS)
    if "minilm" in parts:
        part = minilm_part(args, thread_counts)
        result["versions"].update(part.pop("versions"))
        result.update(part)
    if "bertweet" in parts:
        result["bertweet"] = bertweet_part(thread_counts[0], args.seq_len, args.rounds, args.budget, args.pause)
    finish(result, args.out, "cpu-inference")
    return 0


def minilm_part(args: argparse.Namespace, thread_counts: list[int]) -> dict:
    """Complete and pruned MiniLM, PyTorch against onnxruntime, per thread count (the module's part "minilm")."""
    ort = require("onnxruntime")
    import onnx
    import onnxscript

    base, tokenizer = headprune.load_model(args.model)
    single, batch = bench_inputs(tokenizer, base.config)
    n_layers, n_heads = original_shape(base.config)
    result: dict = {
        "versions": {"onnx": onnx.__version__, "onnxscript": onnxscript.__version__, "onnxruntime": ort.__version__},
        "settings": {"base_model": args.model, "threads": thread_counts, "max_rounds": args.rounds,
                     "budget_seconds": args.budget, "latency_calls_per_round": 5, "batch_calls_per_round": 1,
                     "order": "A1 = importance.random_order(6, 12, seed=1)",
                     "onnx": "torch.onnx.export(dynamo=True); onnxruntime CPUExecutionProvider, default graph "
                             "optimisation (all), intra-op spinning off"},
        "inputs": {"dataset": "person", "batch_1_tokens": int(single[0].shape[1]),
                   "batch_32_padded_tokens": int(batch[0].shape[1]),
                   "batch_32_real_tokens": int(batch[1].sum())},
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
    return result


def bertweet_part(threads: int, seq_len: int, rounds: int, budget: float, pause: int | None) -> dict:
    """The BERTweet shape complete and as MOIH1 next to the complete MiniLM: inference (batch 1 and
    32) and adjusting steps (batch 16), `seq_len` tokens, `threads` intra-op threads (part "bertweet")."""
    from bertweet import adjusting_step_seconds, bertweet_shape, oi_heads

    torch.set_num_threads(threads)
    minilm, tokenizer = headprune.load_model("minilm")
    complete, heads = bertweet_shape(), oi_heads()
    models = {"minilm CM": minilm, "bertweet CM": complete, "bertweet MOIH1": pruned_copy(complete, heads)}
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(1000, MINILM_VOCAB, (32, seq_len), generator=generator)
    single, batch = (rows[:1], torch.ones(1, seq_len, dtype=torch.long)), (rows, torch.ones_like(rows))
    out: dict = {"threads": threads, "seq_len": seq_len, "rounds": rounds, "latency_calls_per_round": 5,
                 "batch_calls_per_round": 1, "adjusting_batch_size": 16,
                 "inputs": f"random token ids in [1000, {MINILM_VOCAB}), no padding", "models": {},
                 "load_average": {"before": load_average()}}
    for name, model in models.items():
        kept = kept_heads(model)
        out["models"][name] = {"pruned_heads": [list(h) for h in heads] if name == "bertweet MOIH1" else [],
                               "kept_per_layer": [len(kept.get(layer, []))
                                                  for layer in range(original_shape(model.config)[0])],
                               "n_params": count_parameters(model)}
    log(f"BERTweet shape: {out['models']['bertweet CM']['n_params']:,} parameters complete, "
        f"{out['models']['bertweet MOIH1']['n_params']:,} as MOIH1; inference, {threads} thread(s)")
    with paused(pause):
        speeds = measure({name: graph_of(model, "encoder") for name, model in models.items()}, single, batch,
                         rounds=rounds, latency_calls=5, batch_calls=1, budget_s=budget)
        log("adjusting steps")
        ids = torch.randint(1000, MINILM_VOCAB, (16 * (rounds + 1), seq_len), generator=generator).tolist()
        steps = adjusting_step_seconds({name: copy.deepcopy(model) for name, model in models.items()}, tokenizer,
                                       ids, rounds)
    out["load_average"]["after"] = load_average()
    for name in models:
        entry = out["models"][name]
        entry["inference"] = speeds[name].to_json()
        entry["adjusting"] = {"step_seconds": steps[name], "median_seconds": statistics.median(steps[name])}
        log(f"{name:>15}: p50 {speeds[name].p50_ms:8.1f} ms, b32 {speeds[name].per_second:6.1f}/s, "
            f"adjusting step {entry['adjusting']['median_seconds']:.2f} s")

    def ratios(name: str, reference: str) -> dict:
        """Time of `name` over time of `reference` (< 1: faster)."""
        a, b = out["models"][name], out["models"][reference]
        return {"batch_1_p50": round(a["inference"]["p50_ms"] / b["inference"]["p50_ms"], 3),
                "batch_32": round(b["inference"]["per_second"] / a["inference"]["per_second"], 3),
                "adjusting_step": round(a["adjusting"]["median_seconds"] / b["adjusting"]["median_seconds"], 3)}

    out["ratios"] = {"moih1_vs_complete": ratios("bertweet MOIH1", "bertweet CM"),
                     "complete_vs_minilm": ratios("bertweet CM", "minilm CM")}
    log(f"time ratios: {out['ratios']}")
    return out


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
