"""The benchmarks' result files (bench/results/*.json): what each starts with (`stamp`: date, machine,
versions, load average), written whole (`finish`, `write_json`), merged (`deep_merge`). Standard
library only at import, so that bench/check.py's part runner imports it without torch; `stamp` imports
torch and headprune when called."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def deep_merge(into: dict, other: dict) -> dict:
    """Merge `other` into `into`: dictionaries recursively, "runs" lists concatenated, the rest replaced."""
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        elif key == "runs" and isinstance(value, list) and isinstance(into.get(key), list):
            into[key] = into[key] + value
        else:
            into[key] = value
    return into


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_json(path: str | Path, data: dict) -> None:
    """Write `data` to `path` (indented JSON) through a temporary file, so that a reader, or a run
    killed mid-write, never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(partial, path)


def stamp() -> dict:
    """What every CPU result file starts with: the date and time (UTC), the machine (CPU model, cores,
    bf16 support, torch's default intra-op threads), the versions, and the 1-minute load average now
    (`load_average.before`; `finish` adds `after`): timings on a shared machine mean little without it."""
    import torch

    from headprune.devices import cpu_has_bf16
    from headprune.pipeline import versions
    from headprune.speed import load_average

    return {"date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "bf16": cpu_has_bf16(),
                        "torch_default_threads": torch.get_num_threads()},
            "versions": versions(),
            "load_average": {"before": load_average()}}


def finish(result: dict, out: str | Path | None, name: str) -> Path:
    """Add the load average now (`load_average.after`) to a `stamp`ed `result`, write it to `out`
    (default bench/results/<its date>-<name>.json), say where, and return the path."""
    from headprune.speed import load_average

    result.setdefault("load_average", {})["after"] = load_average()
    path = Path(out) if out else RESULTS / f"{result['date'][:10]}-{name}.json"
    write_json(path, result)
    print(f"wrote {path}", flush=True)
    return path
