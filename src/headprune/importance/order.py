"""`Order`: the heads of a model ranked from most to least important, whatever criterion made it.
The surgery and the searches only ever see an Order (the Torch-Pruning idea)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import HeadpruneError, parse_user_file
from ..heads import Head


@dataclass
class RunMatrix:
    """One Step 1 run's own importance matrix (a dataset with a seed; the mean over its epochs): what
    the order's stability is measured on (`stability.order_stability`)."""

    dataset: str
    seed: int
    matrix: list[list[float]]

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "seed": self.seed, "matrix": self.matrix}

    @classmethod
    def from_json(cls, data: dict) -> RunMatrix:
        return cls(dataset=data["dataset"], seed=int(data["seed"]), matrix=data["matrix"])


@dataclass
class Order:
    """Heads ranked from most to least important; pruning k heads removes the last k."""

    name: str
    ranked: list[Head]
    n_layers: int
    n_heads: int
    # "importance" (from Step 1's finetunings), "weights" (from the checkpoint's weights alone, no
    # data) or "random" (a seeded permutation)
    kind: str = "importance"
    matrix: list[list[float]] | None = None  # mean importance (importance and weights orders)
    model: str = ""
    model_fingerprint: str = ""
    datasets: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    settings: dict | None = None  # Step 1 orders: the settings part of their rows' keys (`step1_key_settings`)
    # Step 1 orders: {dataset name: content hash} of the datasets averaged over, the dataset part of
    # their rows' keys (a name says nothing about a file's content; `headprune verify` goes by these).
    dataset_hashes: dict[str, str] | None = None
    runs: list[RunMatrix] | None = None  # Step 1 orders: each (dataset, seed) run's own matrix

    def least_important(self, k: int) -> list[Head]:
        """The k heads pruned first."""
        return sorted(self.ranked[len(self.ranked) - k :]) if k > 0 else []

    def ranks(self) -> np.ndarray:
        """(layers, heads) array: each head's rank, 0 = most important."""
        out = np.zeros((self.n_layers, self.n_heads), dtype=int)
        for rank, (layer, head) in enumerate(self.ranked):
            out[layer, head] = rank
        return out

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "model": self.model,
            "model_fingerprint": self.model_fingerprint,
            "datasets": self.datasets,
            "seeds": self.seeds,
            "settings": self.settings,
            "dataset_hashes": self.dataset_hashes,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "matrix": self.matrix,
            "ranked": [list(h) for h in self.ranked],
            "runs": None if self.runs is None else [r.to_json() for r in self.runs],
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def from_json(cls, data: dict) -> Order:
        return cls(
            name=data["name"],
            ranked=[(int(l), int(h)) for l, h in data["ranked"]],
            n_layers=int(data["n_layers"]),
            n_heads=int(data["n_heads"]),
            kind=data.get("kind", "importance"),
            matrix=data.get("matrix"),
            model=data.get("model", ""),
            model_fingerprint=data.get("model_fingerprint", ""),
            datasets=list(data.get("datasets", [])),
            seeds=list(data.get("seeds", [])),
            settings=data.get("settings"),
            dataset_hashes=data.get("dataset_hashes"),
            runs=None if data.get("runs") is None else [RunMatrix.from_json(r) for r in data["runs"]],
        )

    @classmethod
    def load(cls, path: str | Path) -> Order:
        """Read an order file (`headprune importance --out`); a file of another shape is one error line
        naming the key at fault, never a traceback."""
        path = Path(path)
        where = f"--order {path}"
        if path.is_dir():
            raise HeadpruneError(f"{where}: is a directory, not an order file")
        if not path.is_file():
            raise HeadpruneError(f"{where}: file not found")
        data = parse_user_file(path, json.loads, f"{where}: not a headprune order file")
        problem = _shape_problem(data)
        if problem:
            raise HeadpruneError(f"{where}: not a headprune order file ({problem})")
        order = cls.from_json(data)
        if sorted(order.ranked) != [(l, h) for l in range(order.n_layers) for h in range(order.n_heads)]:
            raise HeadpruneError(f"{where}: 'ranked' must list every (layer, head) exactly once")
        return order


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_matrix(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(row, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in row)
        for row in value)


def _shape_problem(data: object) -> str | None:
    """What keeps `data` from being an order's JSON (`Order.to_json`), or None."""
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    for key in ("name", "ranked", "n_layers", "n_heads"):
        if key not in data:
            return f"no '{key}'"
    if not isinstance(data["name"], str):
        return f"'name' must be a string, got {data['name']!r}"
    for key in ("n_layers", "n_heads"):
        if not _is_int(data[key]) or data[key] < 1:
            return f"'{key}' must be a positive integer, got {data[key]!r}"
    if not isinstance(data["ranked"], list):
        return f"'ranked' must be a list of [layer, head] pairs, got {type(data['ranked']).__name__}"
    for i, pair in enumerate(data["ranked"]):
        if not (isinstance(pair, list) and len(pair) == 2 and all(_is_int(x) and x >= 0 for x in pair)):
            return f"'ranked[{i}]' must be a pair [layer, head] of integers from 0, got {json.dumps(pair)}"
    for key, kind, ok in (
        ("kind", "a string", lambda v: isinstance(v, str)),
        ("model", "a string", lambda v: isinstance(v, str)),
        ("model_fingerprint", "a string", lambda v: isinstance(v, str)),
        ("datasets", "a list of names", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
        ("seeds", "a list of integers", lambda v: isinstance(v, list) and all(_is_int(x) for x in v)),
        ("settings", "an object or null", lambda v: v is None or isinstance(v, dict)),
        ("matrix", "a list of rows of numbers or null", lambda v: v is None or _is_matrix(v)),
        ("runs", "a list of {dataset, seed, matrix} or null", lambda v: v is None or (isinstance(v, list) and all(
            isinstance(r, dict) and isinstance(r.get("dataset"), str) and _is_int(r.get("seed"))
            and _is_matrix(r.get("matrix")) for r in v))),
    ):
        if key in data and not ok(data[key]):
            return f"'{key}' must be {kind}, got {json.dumps(data[key])[:40]}"
    return None


def rank_heads(matrix: np.ndarray) -> list[Head]:
    """Heads from most to least important; equal values keep (layer, head) order."""
    matrix = np.asarray(matrix)
    flat = matrix.reshape(-1)
    order = np.lexsort((np.arange(flat.size), -flat))
    n_heads = matrix.shape[1]
    return [(int(i) // n_heads, int(i) % n_heads) for i in order]


__all__ = ["Order", "RunMatrix", "rank_heads"]
