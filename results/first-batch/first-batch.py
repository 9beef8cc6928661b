"""How much Algorithm 2's first batch weighs in a finetuning's importance matrix (issue 25, item 6).

Algorithm 2 (METHOD.md, `importance.gradient.ImportanceAccumulator`, kept faithful): per batch,
importance += |d loss / d xi|, then min-max; per epoch, / tokens, then min-max, a copy kept; the
finetuning's contribution to the order is the mean of its per-epoch copies. Every step is affine,
so each copy is, up to a constant, sum_t c_t |g_t|: this script runs the real accumulator and
tracks each batch's coefficient c_t beside it (each min-max divides every earlier coefficient by the
range it divides by), checking that the reconstruction matches the accumulator's matrices.

The gradients are simulated at the scale of the stored raw statistics (`results/orders-minilm`,
MiniLM, the "raw-abs-sq" rows: per head and epoch, the sums over batches of |g| and g^2, of irony,
sarcasm and SemEval-Fig, seeds 1-3): batch t's |g| of head h is |mu_h + sigma_h z| (mu, sigma the
row's per-batch mean and spread of that epoch; the last stored epoch for later ones). At the paper's
settings (4 epochs, batch 16, whole datasets: batches per epoch = ceil(tweets / 16)), per G1
dataset, with its own three rows where stored, else with each of the nine: the first batch's share
of the summed weight (a plain sum would give it 1 / all batches), its weight over a later batch's
mean, and the Spearman correlation of the finetuning's mean matrix with the first batch's |g| and
with the summed |g|.

Run from the repository root with the project's venv:
    OMP_NUM_THREADS=1 python results/first-batch/first-batch.py
writes results/first-batch/first-batch.json."""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from headprune.importance import ImportanceAccumulator

HERE = Path(__file__).parent
STORE = HERE.parent / "orders-minilm" / "store.sqlite"
DATA = HERE.parents[1] / ".." / "shared" / "data" / "air-datasets"
G1 = {"irony": "irony", "sarcasm": "sarcasm", "SemEval-Fig": "SemEval15-Task11", "archeage": "archeage",
      "HCR": "HCR", "STS-gold": "STS-gold", "SemEval16": "SemEval16"}
EPOCHS, BATCH = 4, 16


def stored_rows() -> dict[str, list[dict]]:
    with sqlite3.connect(STORE) as db:
        rows = db.execute("select dataset, seed, matrices from importance where settings like '%raw-abs-sq%'")
        out: dict[str, list[dict]] = {}
        for dataset, seed, matrices in rows:
            out.setdefault(dataset, []).append({"seed": int(seed), **json.loads(matrices)})
    return out


def simulate(row: dict, batches: int, rng: np.random.Generator) -> dict:
    counts = np.array(row["batches"], dtype=float)[:, None, None]
    mean = np.array(row["abs"]) / counts
    spread = np.sqrt(np.maximum(np.array(row["squared"]) / counts - mean**2, 0))
    shape = mean.shape[1:]
    acc = ImportanceAccumulator(shape, n_tokens=row["tokens"])
    grads: list[np.ndarray] = []
    coefficients = np.zeros(0)
    epochs: list[np.ndarray] = []  # each epoch copy's coefficients
    for epoch in range(EPOCHS):
        mu, sigma = mean[min(epoch, len(mean) - 1)], spread[min(epoch, len(mean) - 1)]
        for _ in range(batches):
            g = np.abs(mu + sigma * rng.standard_normal(shape))
            span = float(np.ptp(acc.importance.numpy() + g))
            acc.add_batch(torch.from_numpy(g))
            grads.append(g)
            coefficients = np.append(coefficients, 1.0) / span
        divided = acc.importance.numpy() / row["tokens"]
        coefficients = coefficients / row["tokens"] / float(np.ptp(divided))
        acc.end_epoch()
        epochs.append(np.pad(coefficients, (0, EPOCHS * batches - len(coefficients))))
    g = np.array(grads)
    for copy, c in zip(acc.epochs, epochs):  # the reconstruction is the accumulator's, up to a constant
        residual = copy.numpy() - np.tensordot(c, g, axes=1)
        assert np.ptp(residual) < 1e-6, np.ptp(residual)
    weight = np.mean(epochs, axis=0)  # the finetuning's matrix: the mean of its epoch copies
    matrix = np.mean([m.numpy() for m in acc.epochs], axis=0).ravel()
    return {"first_share": float(weight[0] / weight.sum()),
            "first_over_later": float(weight[0] / weight[1:].mean()),
            "spearman_first": float(stats.spearmanr(matrix, g[0].ravel())[0]),
            "spearman_summed": float(stats.spearmanr(matrix, g.sum(0).ravel())[0])}


def main() -> None:
    rows = stored_rows()
    every = [r for name in sorted(rows) for r in rows[name]]
    out: dict = {"what": __doc__.split("\n\n")[0], "store": str(STORE.relative_to(HERE.parents[1])),
                 "epochs": EPOCHS, "batch_size": BATCH, "datasets": {}}
    for name, file in G1.items():
        tweets = len(pd.read_csv(DATA / f"{file}.csv"))
        batches = math.ceil(tweets / BATCH)
        templates = rows.get(name, every)
        seed = int.from_bytes(hashlib.sha256(f"first batch {name}".encode()).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        runs = [simulate(row, batches, rng) for row in templates]
        summary = {key: {"mean": round(float(np.mean([r[key] for r in runs])), 4),
                         "min": round(float(np.min([r[key] for r in runs])), 4),
                         "max": round(float(np.max([r[key] for r in runs])), 4)} for key in runs[0]}
        out["datasets"][name] = {"tweets": tweets, "batches_per_epoch": batches, "batches": EPOCHS * batches,
                                 "plain_sum_share": round(1 / (EPOCHS * batches), 6),
                                 "raw_statistics": "own" if name in rows else "all nine stored rows",
                                 "simulations": len(runs), **summary}
        print(name, out["datasets"][name], flush=True)
    (HERE / "first-batch.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
