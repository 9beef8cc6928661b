"""Which tasks the batched engine trains together (packs of similar length) and how many fit."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch

from ..data import split_halves
from ..heads import Head
from ..models import count_parameters
from ..settings import ScoreSettings
from ..surgery import encoder_layers
from ..tasks import SeedTask
from .options import EngineOptions


def finetune_steps(n_rows: int, settings: ScoreSettings) -> int:
    """Optimizer ticks of one model finetuned on `n_rows` rows."""
    return math.ceil(n_rows / settings.batch_size) * settings.epochs


def auto_pack_size(model, device: torch.device, ceiling: int = 128) -> int:
    """How many full-shape copies of `model` to train together: what fits at ~16 bytes per parameter
    (weights, gradient, two Adam moments) plus activations of a batch of 16 rows of up to 64 tokens,
    in 80% of the GPU's memory on CUDA; on CPU in half the RAM and at most 16 (a CPU gains little
    from larger stacks; a BERTweet-size model gets ~4 on a 24 GB machine, not 16).

    From the *total* memory, not what is free at the moment: packs decide which models share
    dropout streams, so the same device must always give the same packs (a run resumed in another
    process gives the scores an uninterrupted one would). A pack that does not fit after all is
    halved (`BatchedExecutor`), the same way every time."""
    config = model.config
    n_params = count_parameters(model)
    hidden, inter = int(config.hidden_size), int(getattr(config, "intermediate_size", 4 * config.hidden_size))
    layers = len(encoder_layers(model))
    activations = 16 * 64 * layers * (10 * hidden + 2 * inter) * 4
    per_model = 16 * n_params + activations
    if device.type != "cuda":
        total = total_ram()
        return 16 if total is None else int(max(1, min(16, ceiling, (0.5 * total) // per_model)))
    _, total = torch.cuda.mem_get_info(device)
    return int(max(1, min(ceiling, (0.8 * total) // per_model)))


def total_ram() -> int | None:
    """Bytes of RAM of this machine (Linux: MemTotal), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def plan_packs(tasks: Sequence[SeedTask], steps: dict[SeedTask, int], size: int, ratio: float = 1.25
               ) -> list[list[SeedTask]]:
    """Tasks in packs of at most `size` models whose step counts are within `ratio` of each other
    (a model whose data runs out waits for the others: similar lengths waste little). Deterministic:
    tasks are ordered by (steps, dataset, pruned set, seed) and packed greedily."""
    ordered = sorted(dict.fromkeys(tasks), key=lambda t: (steps[t], t.dataset, t.pruned, t.seed))
    packs: list[list[SeedTask]] = []
    for task in ordered:
        if packs and len(packs[-1]) < size and steps[task] <= ratio * steps[packs[-1][0]]:
            packs[-1].append(task)
        else:
            packs.append([task])
    return packs


def plan_units(tasks: Sequence[SeedTask], datasets: dict, settings: ScoreSettings, options: EngineOptions,
               pack_size: int, batch: Sequence[SeedTask] | None = None) -> list[list[SeedTask]]:
    """What the batched engine trains together, in order: with `options.pack`, packs of at most
    `pack_size` models (`plan_packs`), longest first (the SVMs of the big packs then run while the
    small ones train, and the last pack's SVMs, the GPU's idle tail before the next search round,
    are the quickest); without, one pruned set's seeds on one dataset per unit.

    `batch`: the whole request `tasks` belong to (tasks already in the store included). The units
    are planned over it, as an uninterrupted run plans them, and those holding a task of `tasks`
    are kept: the models that train together, and so their dropout streams and scores, do not
    depend on where an earlier run was stopped (a unit it left half stored is trained whole again)."""
    wanted = set(tasks)
    unique = list(dict.fromkeys([*(batch or ()), *tasks]))
    if options.pack:
        steps = {t: finetune_steps(len(split_halves(datasets[t.dataset][1], t.seed)[0]), settings) for t in unique}
        units = plan_packs(unique, steps, pack_size, options.pack_step_ratio)[::-1]
    else:
        groups: dict[tuple[tuple[Head, ...], str], list[SeedTask]] = {}
        for task in unique:
            groups.setdefault((tuple(task.pruned), task.dataset), []).append(task)
        units = list(groups.values())
    return [unit for unit in units if any(t in wanted for t in unit)]
