"""`headprune run --budget`: how long a budgeted run takes against its budget, for a few budgets on
this machine (a benchmark, never a test).

Each budget runs `headprune run --budget B` in a fresh run directory (a cold store; the warmed-up MLM
head of the profile may be cached) in a subprocess, and records the wall time, the exit code (0:
finished, 3: stopped at the budget), the profile chosen and the estimates it compared.

    OMP_NUM_THREADS=1 python bench/budget.py --budgets 10m,20m [--data FILE] [--out bench/results/X.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import finish, stamp  # noqa: E402


def run_budget(budget: str, run_dir: Path, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "headprune", "run", "--budget", budget, "--run-dir", str(run_dir), *extra]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    chosen = re.search(r"budget \S+: profile (\S+) \(estimates on this machine: ([^)]*)\)", done.stdout)
    summary = run_dir / "summary.json"
    return {
        "budget": budget,
        "command": " ".join(command[1:]),
        "exit_code": done.returncode,
        "wall_seconds": round(wall, 1),
        "profile": chosen.group(1) if chosen else None,
        "estimates": chosen.group(2) if chosen else None,
        "summary_budget": json.loads(summary.read_text()).get("budget") if summary.is_file() else None,
        "stderr_tail": done.stderr[-500:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="10m,20m")
    parser.add_argument("--data", action="append", default=[], help="--data for the runs (default: the profiles')")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    extra = [item for path in args.data for item in ("--data", path)]
    result = {**stamp(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "runs": []}
    runs = result["runs"]
    with tempfile.TemporaryDirectory(prefix="headprune-budget-") as root:
        for budget in args.budgets.split(","):
            runs.append(run_budget(budget, Path(root) / budget, extra))
            print(json.dumps(runs[-1]), flush=True)
    finish(result, args.out, "cpu-budget")


if __name__ == "__main__":
    main()
