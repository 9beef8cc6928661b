"""`Order`: the heads of a model ranked from most to least important, whatever criterion made it.
The surgery and the searches only ever see an Order (the Torch-Pruning idea)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import HeadpruneError
from ..tasks import Head


@dataclass
class Order:
    """Heads ranked from most to least important; pruning k heads removes the last k."""

    name: str
    ranked: list[Head]
    n_layers: int
    n_heads: int
    kind: str = "importance"  # or "random"
    matrix: list[list[float]] | None = None  # mean importance (importance orders only)
    model: str = ""
    model_fingerprint: str = ""
    datasets: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    settings: dict | None = None  # Step 1 orders: the settings part of their rows' keys (`step1_key_settings`)
    # Step 1 orders: {dataset name: content hash} of the datasets averaged over, the dataset part of
    # their rows' keys (a name says nothing about a file's content; `headprune verify` goes by these).
    dataset_hashes: dict[str, str] | None = None

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
        )

    @classmethod
    def load(cls, path: str | Path) -> Order:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            order = cls.from_json(data)
        except FileNotFoundError:
            raise HeadpruneError(f"--order {path}: file not found") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise HeadpruneError(f"--order {path}: not a headprune order file ({err})") from None
        if sorted(order.ranked) != [(l, h) for l in range(order.n_layers) for h in range(order.n_heads)]:
            raise HeadpruneError(f"--order {path}: 'ranked' must list every (layer, head) exactly once")
        return order


def rank_heads(matrix: np.ndarray) -> list[Head]:
    """Heads from most to least important; equal values keep (layer, head) order."""
    matrix = np.asarray(matrix)
    flat = matrix.reshape(-1)
    order = np.lexsort((np.arange(flat.size), -flat))
    n_heads = matrix.shape[1]
    return [(int(i) // n_heads, int(i) % n_heads) for i in order]


__all__ = ["Order", "rank_heads"]
