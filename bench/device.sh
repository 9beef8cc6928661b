#!/bin/bash
# Commands for a session that has the GPU machine (the `device` tool), in the order to run them.
# Prepare here once:  ../shared/tools/prepare-device-carry.sh --carry-data   (.carry/minilm fp16, .carry/data)
#   (in a git worktree, where .git is a file and that script stops, copy .carry/ from the main checkout)
#
# FIRST, whenever a device is available: the check (bench/check.py, issue 17), at most 5 minutes:
#   run(command="bash bench/device.sh check", carry=[".carry/minilm", ".carry/data"], timeout_s=420)
# It writes $OUT/check.json after every part and $OUT/check.log (every traceback); both come back.
# Then here: cp <files_at>/check.json bench/results/<date>-nvidia-h200.json (and check.log beside it
# as <date>-nvidia-h200.log if a part failed), commit; fix what broke on CPU, rehearse it with
# `OUT=/tmp/check bash bench/device.sh check-rehearsal` (CPU, tiny sizes), and rerun the check
# (or only the parts that failed: `bash bench/device.sh check --parts parity,determinism`) if the
# 15 minutes allow; give the machine back. Only after the check has passed: `slice`.
#
# The other commands, each `run` call: carry [".carry/minilm", ".carry/data"], command "bash bench/device.sh <part>".
# The paper run's state is tracked in git (results/minilm-paper/run: store.sqlite + the warmed-up
# MLM head of .carry/minilm), so it travels with the working tree; a slice brings the grown store
# back under $OUT: copy it over results/minilm-paper/run/store.sqlite here and commit.
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
A="--model .carry/minilm --data-dir .carry/data"
OUT=${OUT:-/tmp/headprune-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null || true
case "${1:-}" in
  check)     # issue 17: smoke, throughput (MiniLM, BERTweet shape), parity, determinism; at most 280 s
    python3 bench/check.py $A --out "$OUT" "${@:2}" ;;
  check-rehearsal)  # the same on CPU with tiny sizes (here, before a device session)
    python3 bench/check.py $A --cpu-rehearsal --out "$OUT" "${@:2}" ;;
  smoke)     # ~2 min: every part on 2 small datasets, subsampled (catches crashes before spending time)
    python3 bench/engine.py $A --quick --parts throughput,parity,packed --out "$OUT/smoke.json" ;;
  minilm)    # naive loop vs seed stacks vs packs, MiniLM, all of G2
    python3 bench/engine.py $A --models minilm --parts throughput,packed --out "$OUT/minilm.json" ;;
  parity)    # reference vs engine F1, G2 x seeds 1-10, reference in 8 processes
    python3 bench/engine.py $A --models minilm --parts parity --parity-workers 8 --out "$OUT/parity.json" ;;
  bertweet)  # the BERTweet shape (random init): naive vs stacks vs packs
    python3 bench/engine.py $A --models bertweet-shape --parts throughput,packed --out "$OUT/bertweet.json" ;;
  determinism)  # the cost of deterministic kernels (run.deterministic, on by default): packs on 2 datasets
    python3 bench/engine.py $A --models minilm --parts packed --datasets SemEval18,Vader --out "$OUT/det.json" &&
    python3 bench/engine.py $A --models minilm --parts packed --datasets SemEval18,Vader --no-deterministic \
      --out "$OUT/nodet.json" ;;
  slice)     # a slice of the paper protocol on MiniLM; stops starting work after ${2:-8} minutes
    run=results/minilm-paper/run
    XDG_CACHE_HOME=$run/cache python3 -m headprune run --config configs/paper-minilm.toml $A \
      --run-dir "$run" --time-limit "${2:-8}"
    rc=$?
    python3 - "$run/store.sqlite" "$OUT/store.sqlite" <<'PY'
import sqlite3, sys
src = sqlite3.connect(sys.argv[1]); dst = sqlite3.connect(sys.argv[2])
src.backup(dst); dst.close(); src.close()   # one self-contained file (the WAL folded in)
PY
    cp -r "$run/orders" "$run/summary.json" "$run/report" "$OUT/" 2>/dev/null
    exit $rc ;;
  *) echo "usage: bash bench/device.sh check|check-rehearsal|smoke|minilm|parity|bertweet|determinism|slice [minutes]"
     exit 2 ;;
esac
