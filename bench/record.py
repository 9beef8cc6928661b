"""The benchmarks' result files (bench/results/*.json): merged and written whole. Standard library
only, so that bench/check.py's part runner imports it without torch."""

from __future__ import annotations

import json
import os
from pathlib import Path


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
