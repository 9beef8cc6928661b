"""Where evaluations run, behind the one contract of `tasks.Executor`: in this process
(`InProcessExecutor`), in worker processes (`ProcessExecutor`), on the batched engine
(`engine.BatchedExecutor`) or on Ray (`RayExecutor`). `make_executor` is the one factory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from ..devices import resolve_device
from ..protocol import batched_engine
from ..tasks import Executor
from .local import InProcessExecutor, ProcessExecutor, WorkerProcesses
from .ray_executor import RAY_MISSING, RayExecutor

if TYPE_CHECKING:
    from ..config import Config


def make_executor(config: Config, stage: str = "step2") -> Executor:
    """The executor of a stage ("step1", "step2", "generalization", "timing").

    Table 14's timings ("timing"): in this process, each model adjusting alone (`Scorer.adjust_times`).

    Step 1: its finetunings in `step1.workers` processes (0: 6 on a GPU, where one batch-16
    finetuning cannot fill it, 1 on CPU), else here.

    `run.engine`: "reference" (the reference loop), "batched" (the batched engine) or "auto" (the
    batched engine on CUDA, the reference loop otherwise). With the batched engine, Step 2 packs
    different candidates into one masked stack (`run.pack`); the generalization check never does,
    so that each chosen model's adjusting time is its own (Table 14). `run.executor = "ray"`: on
    Ray, where `run.engine` chooses what a Ray task is (one evaluation, or one unit of the engine).
    The reference loop here: in `run.workers` worker processes (`WorkerProcesses`; 0: on a CPU one
    per core of 1 thread, where two 1-thread processes do more than one of 2 threads; on a GPU 1),
    or in this process (1)."""
    from ..engine import BatchedExecutor, EngineOptions

    if stage == "timing":
        return InProcessExecutor()
    if stage == "step1":
        workers = config.step1.workers or (6 if _device(config).type == "cuda" else 1)
        return ProcessExecutor(workers) if workers > 1 else InProcessExecutor()
    options = EngineOptions(pack=config.run.pack and stage == "step2", pack_models=config.run.pack_models or None,
                            amp=True if config.run.precision == "bf16" else None)  # None: bf16 on CUDA only
    if config.run.executor == "ray":
        return RayExecutor(
            address=config.run.address or None,
            num_gpus_per_task=config.run.ray_gpus_per_task,
            max_retries=config.run.ray_max_retries,
            engine=config.run.engine,
            engine_options=options,
            device=config.run.device,
        )
    if batched_engine(config, _device(config).type):
        return BatchedExecutor(options)
    workers = config.run.workers or (0 if _device(config).type == "cpu" else 1)
    return InProcessExecutor() if workers == 1 else WorkerProcesses(workers)


def checked_engine(config: Config, base_model, tokenizer, limit: int, device: torch.device,
                   log: Callable[[str], None], check: Callable[..., str | None] | None = None) -> Config:
    """`config`, or a copy with `run.engine = "reference"` when "auto" would pick the batched engine
    here (in this process, on CUDA) and its self-check fails (`engine.self_check`: a tiny pack
    trained by the engine and by the reference loop on `device`): then `log` gets one line and the
    run goes on with the reference loop. The engine has not yet run on a GPU; "batched" forces it
    unchecked, and on Ray each worker's device is not known here (no check). `check`: the self-check
    (`engine.self_check` unless a caller, a test, gives another)."""
    if config.run.engine != "auto" or config.run.executor == "ray" or not batched_engine(config, device.type):
        return config
    if check is None:
        from ..engine import self_check as check

    problem = check(base_model, tokenizer, device, limit=limit)
    if problem is None:
        return config
    log(f"the batched engine failed its self-check on {device} ({problem}); using the reference loop "
        "(run.engine = \"batched\" forces the engine)")
    return replace(config, run=replace(config.run, engine="reference"))


def _device(config: Config) -> torch.device:
    device = config.run.device
    return device if isinstance(device, torch.device) else resolve_device(str(device))


__all__ = ["RAY_MISSING", "InProcessExecutor", "ProcessExecutor", "RayExecutor", "WorkerProcesses", "checked_engine",
           "make_executor"]
