"""`headprune run --dry-run`: a configuration's stages with their number of evaluations, and a time
estimate from a short timed calibration on this device.

Planning reads a `Pipeline` and its `workspace.Workspace` (configuration, datasets, base model,
engine) and never runs it; the pipeline needs no plan, so this module depends on pipeline.py and
not the reverse."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from .base import BaseModel
from .checkpoint import read_config
from .data import expand_datasets
from .importance import criterion_for
from .models import resolve_model_path
from .pipeline import TIMING_SEEDS, Pipeline
from .progress import format_seconds
from .scoring import adjust, encode
from .settings import ScoreSettings
from .surgery import original_shape

# What racing saved where it was measured (`headprune replay` of results/racing-check).
RACED_TYPICAL = ("how many depends on how clearly the candidates differ: replayed on results/racing-check's H1 "
                 "grid (MiniLM, 12 candidates, 4 datasets, 10 seeds), races made 0.63-0.67 of the evaluations; "
                 "H2/H3 (walks of 48 steps, the default walk test) 0.92-0.94")

# A tweet of typical length (~30 tokens): what a calibration step trains on.
CALIBRATION_TWEET = "someuser this is a tweet of typical length about a movie i watched yesterday, loved it!"


def total_heads(model_name: str) -> int:
    """Heads of the model in original coordinates, read from its configuration alone, so that the
    plan of a dry run loads no weights."""
    layers, heads = original_shape(read_config(resolve_model_path(model_name)))
    return layers * heads


def raced_least(evaluations: int, config) -> int:
    """The fewest evaluations a raced search of `evaluations` (its full grid) can make: every
    candidate and every step gets at least `racing_first_test` seeds of the Step 2 seeds (racing.py)."""
    seeds = len(config.step2_seeds)
    return math.ceil(evaluations * min(config.step2.racing_first_test, seeds) / seeds)


def plan(pipeline: Pipeline) -> list[dict]:
    """Stages with their number of evaluations (H2/H3: at most), in the order `Pipeline.run` runs them.
    With racing on, each search stage also has "least": the fewest it can make (`raced_least`)."""
    config = pipeline.config
    n_heads = total_heads(config.model.name)
    g3 = expand_datasets(config.generalization.datasets)
    stages: list[dict] = []
    n_models = 1
    kinds = {order: criterion_for(order).kind for order in config.step2.orders}
    step1 = [order for order, kind in kinds.items() if kind == "importance"]
    for order in config.step2.orders:
        if step1 and order == step1[0]:  # the Step 1 orders share one set of finetunings
            stages.append(
                {
                    "stage": f"Step 1: importance ({', '.join(step1)})",
                    "finetunings": len(expand_datasets(config.step1.datasets)) * len(config.step1_seeds),
                    "evaluations": 0,
                }
            )
        strategies = (config.step2.random_order_strategies if kinds[order] == "random"
                      else config.step2.strategies)
        for strategy in strategies:
            n_models += 1
            stage = {"stage": f"{strategy} {order}", "evaluations": pipeline.search_evaluations(strategy, n_heads)}
            if strategy != "H1":
                stage["at_most"] = True
            if config.step2.racing:
                stage["least"] = raced_least(stage["evaluations"], config)
            stages.append(stage)
    # Tables 7-10 come from the scores the searches stored; only CM may be missing on G2 (when no
    # H1 grid holds k = 0 and no H3 walk scored the complete model).
    # (A race may drop k = 0 early; H3's baseline has every seed of the complete model.)
    cm_scored = ("H1" in config.step2.strategies and 0 in pipeline.k_values(n_heads) and not config.step2.racing
                 ) or "H3" in config.step2.strategies
    n_g2 = len(expand_datasets(config.step2.datasets))
    if n_models > 1:
        stages.append({"stage": "Tables 7-10 (G2)", "evaluations": 0 if cm_scored else
                       n_g2 * len(config.step2_seeds)})
        if config.step2_fresh_seeds:  # nothing stored on these seeds: every chosen model (fewer where two coincide)
            stages.append({"stage": "G2 on fresh seeds", "at_most": True,
                           "evaluations": n_models * n_g2 * len(config.step2_fresh_seeds)})
    stages.append({"stage": "generalization", "evaluations": n_models * len(g3) * len(config.generalization_seeds)})
    if pipeline.workspace.batched():  # Table 14: each model timed adjusting alone (the reference loop)
        stages.append({"stage": "Table 14: each model adjusting alone", "evaluations": 0,
                       "adjustings": n_models * len(g3) * min(TIMING_SEEDS, len(config.generalization_seeds))})
    return stages


def estimate(pipeline: Pipeline, stages: list[dict]) -> dict:
    """Seconds per evaluation on this device, from a short timed calibration of the model: the
    reference loop's step, or on the batched engine a step of a stack as large as Step 2's packs
    (and as the generalization's seed groups), per model. Adds each stage's "seconds" to `stages`."""
    work = pipeline.workspace
    config, settings, device = work.config, work.settings, work.device
    base = work.load_base()
    step2 = [work.dataset(n) for n in expand_datasets(config.step2.datasets)]
    g3 = [work.dataset(n) for n in expand_datasets(config.generalization.datasets)]
    s1 = [work.dataset(n) for n in expand_datasets(config.step1.datasets)]
    step_seconds = calibrate(base, settings, device)  # Step 1 and Table 14's timings run in this process
    workers, threads = reference_workers(pipeline.config, base.model)
    worker_step = step_seconds if workers == 1 else calibrate(base, settings, device, threads=threads)
    # The reference loop's evaluations in `workers` processes at once: per evaluation, a step's share.
    model_step = {"step2": worker_step / workers, "generalization": worker_step / workers}
    engine = ("reference loop" if workers == 1 else
              f"reference loop in {workers} worker processes of {threads} thread{'s' if threads > 1 else ''}")
    if work.batched():
        from .engine import auto_pack_size

        pack = config.run.pack_models or auto_pack_size(base.model, device)
        sizes = {"step2": min(pack, 64) if config.run.pack else len(config.step2_seeds),
                 "generalization": len(config.generalization_seeds)}
        for name, n in sizes.items():
            model_step[name] = calibrate_batched(base, settings, device, n)
        engine = f"batched engine, stacks of {sizes['step2']} (Step 2) and {sizes['generalization']} models"
    per_eval = {}
    for name, group in (("step2", step2), ("generalization", g3)):
        halves = [len(d) / 2 for d in group]
        steps = np.mean([math.ceil(h / settings.batch_size) for h in halves]) * settings.epochs
        # features ~ a third of a training step per batch; SVM ~ 1% of the adjusting time
        per_eval[name] = (steps * model_step[name] * 1.05
                          + np.mean(halves) / settings.batch_size * model_step[name] / 3)
    finetune = np.mean([math.ceil(len(d) / config.step1.batch_size) for d in s1]) * config.step1.epochs
    total = 0.0
    for stage in stages:
        if "finetunings" in stage:
            stage["seconds"] = stage["finetunings"] * finetune * step_seconds * 1.2
        elif "adjustings" in stage:  # the reference loop's adjusting alone, on G3 halves
            halves = [len(d) / 2 for d in g3]
            steps = np.mean([math.ceil(h / settings.batch_size) for h in halves]) * settings.epochs
            stage["seconds"] = stage["adjustings"] * steps * step_seconds
        else:
            key = "generalization" if stage["stage"] == "generalization" else "step2"
            stage["seconds"] = stage["evaluations"] * per_eval[key]
        total += stage["seconds"]
    return {"step_seconds": step_seconds, "total_seconds": total, "engine": engine,
            "model_step_seconds": model_step}


def reference_workers(config, model) -> tuple[int, int]:
    """(processes, torch threads of each) the reference loop's Step 2 and generalization evaluations
    run in (`executors.make_executor`, `WorkerProcesses`): (1, this process's threads) in process."""
    from .executors import WorkerProcesses, make_executor

    executor = make_executor(config, "step2")
    if isinstance(executor, WorkerProcesses):
        return executor.resolved(model)
    return 1, torch.get_num_threads()


def calibrate(base: BaseModel, settings: ScoreSettings, device: torch.device, steps: int = 3,
              threads: int | None = None) -> float:
    """Seconds for one adjusting step (batch of `settings.batch_size` tweets of ~30 tokens) on
    `device`, with `threads` torch threads (None: as many as now)."""
    model = copy.deepcopy(base.model).to(device)
    texts = [CALIBRATION_TWEET] * (settings.batch_size * (steps + 1))
    ids = encode(base.tokenizer, texts, base.max_length)
    one = ScoreSettings(**{**settings.as_dict(), "epochs": 1})
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        adjust(model, base.tokenizer, ids[: settings.batch_size], one, 0, device)  # warm-up of the kernels
        seconds = adjust(model, base.tokenizer, ids[settings.batch_size :], one, 0, device)
    finally:
        torch.set_num_threads(before)
    return seconds / steps


def calibrate_batched(base: BaseModel, settings: ScoreSettings, device: torch.device, n_models: int,
                      steps: int = 3) -> float:
    """Seconds of one adjusting step *per model* when `n_models` train together on the batched engine."""
    from .engine import EngineOptions, StackedMLM, adjust_stacked

    texts = [CALIBRATION_TWEET] * (settings.batch_size * steps)
    ids = encode(base.tokenizer, texts, base.max_length)
    one = ScoreSettings(**{**settings.as_dict(), "epochs": 1})
    options = EngineOptions(prep_workers=0)
    warm = StackedMLM.masked(base.model, [()] * n_models, device)
    adjust_stacked(warm, base.tokenizer, [(ids[: settings.batch_size], s) for s in range(n_models)], one, options)
    del warm
    stack = StackedMLM.masked(base.model, [()] * n_models, device)
    seconds = adjust_stacked(stack, base.tokenizer, [(ids, s) for s in range(n_models)], one, options)
    return seconds / steps / n_models


def dry_run_text(pipeline: Pipeline, with_estimate: bool = True) -> str:
    """What `headprune run --dry-run` prints: every stage's count (and, with the estimate, its time),
    so that a run's size is known before it starts. Computes no evaluation and writes nothing."""
    stages = plan(pipeline)
    lines = [
        f"plan for {pipeline.config.source or 'configuration'} (model {pipeline.config.model.name}, "
        f"device {pipeline.device}):"
    ]
    times = estimate(pipeline, stages) if with_estimate else None
    total = least = 0
    for stage in stages:
        if "finetunings" in stage:
            count = f"{stage['finetunings']} finetunings"
        elif "adjustings" in stage:
            count = f"{stage['adjustings']} adjusting runs timed alone"
        elif "least" in stage:
            count = f"{stage['least']} to {stage['evaluations']} evaluations (raced)"
        else:
            count = f"{'at most ' if stage.get('at_most') else ''}{stage['evaluations']} evaluations"
        total += stage.get("evaluations", 0)
        least += stage.get("least", stage.get("evaluations", 0))
        eta = ""
        if times:
            eta = f"  ~{format_seconds(stage['seconds'])}"
            if "least" in stage and stage["evaluations"]:
                eta = (f"  ~{format_seconds(stage['seconds'] * stage['least'] / stage['evaluations'])}"
                       f" to {format_seconds(stage['seconds'])}")
        lines.append(f"  {stage['stage']:<22s} {count}{eta}")
    if least < total:
        lines.append(f"  total: {least} to {total} evaluations (each = one seed of PRUN_ADJ_EVAL); racing "
                     f"(step2.racing, confidence {pipeline.config.step2.racing_confidence}) gives each candidate and "
                     f"step {pipeline.config.step2.racing_first_test} seeds at least and all "
                     f"{len(pipeline.config.step2_seeds)} at most; {RACED_TYPICAL}"
                     + ("; screened (racing_screen = no-adjust): compared candidates first race without the "
                        "adjusting step, at most as many such evaluations again, each about a fifth of one"
                        if pipeline.config.step2.racing_screen else ""))
    else:
        lines.append(f"  total: at most {total} evaluations (each = one seed of PRUN_ADJ_EVAL)")
    if times:
        lines.append(
            f"  estimate on this device: ~{format_seconds(times['total_seconds'])}"
            f"{' at most' if least < total else ''} "
            f"({times['engine']}; one adjusting step per model = "
            f"{times['model_step_seconds']['step2']:.3f} s; stored evaluations are skipped)"
        )
    return "\n".join(lines)


__all__ = ["calibrate", "calibrate_batched", "dry_run_text", "estimate", "plan", "raced_least", "reference_workers",
           "total_heads"]
