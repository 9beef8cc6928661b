"""The device check (issue 17): the batched engine's CUDA paths, its throughput against the naive
loop, its F1 parity with the reference and its determinism, in one command of at most 5 minutes
of wall time on the GPU machine (one H200).

    bash bench/device.sh check              # on the GPU machine: python3 bench/check.py --out "$OUT"
    bash bench/device.sh check-rehearsal    # the same parts on CPU with tiny sizes (--cpu-rehearsal)
    python3 bench/check.py --parts parity   # a subset (e.g. a rerun after a fix)

This file holds the parts' budgets and sizes, the derived numbers and the targets; the parts are
bench/check_parts.py's functions, run by bench/harness.py. Each part runs in a process of its own,
with a wall-clock budget (its time box): a part still
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
import os
import shutil
import sys
import tempfile
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
from harness import Part  # noqa: E402

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
PAPER_HEAD_CACHE = ROOT / "results" / "minilm-paper" / "run" / "cache" / "headprune"  # .carry/minilm's warmed head
TARGETS = {  # issue 17
    "minilm": {"speedup": 20.0, "tokens_per_s": 238_000},
    "bertweet-shape": {"speedup": 20.0, "tokens_per_s": 170_000},
}
H1_GPU_HOURS_TARGET = {"minilm": 1.0, "bertweet-shape": 4.0}



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


def run_check(parts: list[Part], out_dir: str | Path, context: dict, header: dict | None = None) -> dict:
    """The parts in bench/harness.py's time boxes, with this check's derived numbers and targets."""
    return harness.run_check(parts, out_dir, context, header, derive=derive)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/headprune-out"),
                        help="folder of check.json and check.log (default: $OUT)")
    parser.add_argument("--cpu-rehearsal", action="store_true", help="on CPU, with tiny sizes")
    parser.add_argument("--model", default=".carry/minilm")
    parser.add_argument("--data-dir", default=".carry/data")
    parser.add_argument("--parts", default=",".join(PART_NAMES), help=f"a subset of {','.join(PART_NAMES)}")
    args = parser.parse_args(argv)

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
    parts = [Part(name, f"{HERE / 'check_parts.py'}:{name.replace('-', '_')}", BUDGETS[mode][name], SIZES[mode][name])
             for name in names]
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

