"""`headprune run`: Step 1 -> Step 2 (H1/H2/H3 for each order) -> generalization check -> summary.json.

Every evaluation goes through the results store, so a rerun of the same configuration resumes
where an interrupted one stopped and recomputes nothing."""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .config import Config, departures
from .data import Dataset, cap_examples, check_enough_per_class, expand_datasets, load_dataset
from .errors import HeadpruneError
from .generalize import random_means, significance, summarize, timing_summary
from .importance import ImportanceSettings, Order, importance_order, random_order
from .progress import RunProgress, format_seconds
from .scoring import BaseModel, Scorer, ScoreSettings, WarmupSettings, encode, load_base, reproducible, resolve_device
from .search import h1_search, h2_search, h3_search, k_values_from, run_searches
from .store import ResultStore
from .summary import (
    COMPLETE,
    SUMMARY_FILE,
    ChosenModel,
    DatasetScores,
    Generalization,
    GreedyResult,
    H1Result,
    ModelInfo,
    OrderEntry,
    RandomMean,
    Significance,
    Summary,
    write_summary,
)

SEARCHES = {"H2": h2_search, "H3": h3_search}


def default_cache_dir() -> Path:
    import os

    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "headprune"


def versions() -> dict:
    import scipy
    import sklearn
    import transformers

    return {
        "headprune": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "scikit-learn": sklearn.__version__,
        "scipy": scipy.__version__,
    }


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def score_settings(config: Config) -> ScoreSettings:
    return config.scoring  # [scoring] is a (frozen) ScoreSettings


def importance_settings(config: Config) -> ImportanceSettings:
    """Step 1's finetuning settings (the [step1] section less its datasets and seeds)."""
    names = {f.name for f in fields(ImportanceSettings)}
    return ImportanceSettings(**{k: v for k, v in asdict(config.step1).items() if k in names})


def make_executor(config: Config, stage: str = "step2"):
    """The executor of a stage. With the batched engine, Step 2 packs different candidates into one
    masked stack (`run.pack`); the generalization check never does, so that each chosen model's
    adjusting time is its own (Table 14). On Ray, `run.engine` chooses what a Ray task is: one
    evaluation (reference) or one unit of the batched engine (a pack, a candidate's seeds)."""
    from .engine import BatchedExecutor, EngineOptions, default_executor
    from .execute import InProcessExecutor

    options = EngineOptions(pack=config.run.pack and stage == "step2", pack_models=config.run.pack_models or None)
    if config.run.executor == "ray":
        from .execute import RayExecutor  # type: ignore[attr-defined]

        return RayExecutor(
            address=config.run.address or None,
            num_gpus_per_task=config.run.ray_gpus_per_task,
            max_retries=config.run.ray_max_retries,
            engine=config.run.engine,
            engine_options=options,
            device=config.run.device,
        )
    if config.run.engine == "batched":
        return BatchedExecutor(options)
    if config.run.engine == "reference":
        return InProcessExecutor()
    return default_executor(config.run.device, options)


class Pipeline:
    """The whole method for one configuration and run directory."""

    def __init__(self, config: Config, run_dir: str | Path, progress: RunProgress | None = None,
                 deadline: float | None = None):
        self.config = config
        self.deadline = deadline  # time.monotonic(): past it no new evaluation starts (errors.Stopped)
        self.run_dir = Path(run_dir)
        self.progress = progress or RunProgress()
        self.data_dir = config.data.data_dir or None
        self.device = resolve_device(config.run.device)
        reproducible(self.device, config.run.deterministic)
        self.settings = score_settings(config)
        self._datasets: dict[str, Dataset] = {}
        self.sources: dict[str, str] = {}  # dataset name (file stem for user files) -> name or path

    # ------------------------------------------------------------------ helpers
    def dataset(self, name: str) -> Dataset:
        """A dataset by bundled name, file path, or the display name of one already loaded."""
        name = self.sources.get(name, name)
        if name not in self._datasets:
            loaded = load_dataset(
                name,
                text_column=self.config.data.text_column,
                label_column=self.config.data.label_column,
                data_dir=self.data_dir,
            )
            self._datasets[name] = cap_examples(loaded, self.config.data.max_examples)
        return self._datasets[name]

    def datasets(self, spec: list[str], check_folds: bool = True) -> list[Dataset]:
        out = []
        for item in expand_datasets(spec):
            ds = self.dataset(item)
            if self.sources.setdefault(ds.name, item) != item:
                raise HeadpruneError(
                    f"two datasets are both named '{ds.name}' ({self.sources[ds.name]} and {item}); rename one file"
                )
            out.append(ds)
        if check_folds:
            for ds in out:
                check_enough_per_class(ds, self.settings.n_folds)
        return out

    def rows(self, name: str) -> float:
        """Rows one evaluation on `name` finetunes (half the dataset): the unit of the time left."""
        return len(self.dataset(name)) / 2

    def warmup(self) -> WarmupSettings | None:
        steps = self.config.model.mlm_head_warmup_steps
        return WarmupSettings(steps=steps) if steps > 0 else None

    def load_base(self) -> BaseModel:
        return load_base(
            self.config.model.name,
            self.warmup(),
            data_dir=self.data_dir,
            cache_dir=self.cache_dir(),
            device=self.device,
            progress=self.progress.log,
        )

    def cache_dir(self) -> Path:
        return Path(self.config.model.cache_dir) if self.config.model.cache_dir else default_cache_dir()

    def base_loader(self):
        """A picklable callable building the same base model (for worker processes; the warmed-up
        head comes from the cache `load_base` filled)."""
        import functools

        return functools.partial(load_base, self.config.model.name, self.warmup(), data_dir=self.data_dir,
                                 cache_dir=self.cache_dir())

    def scorer(self, base: BaseModel, store: ResultStore, seeds: list[int], executor) -> Scorer:
        return Scorer(
            base,
            store,
            self.settings,
            seeds=seeds,
            data_dir=self.data_dir,
            text_column=self.config.data.text_column,
            label_column=self.config.data.label_column,
            # On Ray the workers choose their own device: the driver may have no GPU.
            device=self.config.run.device if self.config.run.executor == "ray" else str(self.device),
            executor=executor,
            on_result=lambda task, score, cached: self.progress.advance(cached, work=self.rows(task.dataset)),
            sources=self.sources,
            loader=self.dataset,
            deadline=self.deadline,
        )

    def order(self, name: str, base: BaseModel, store: ResultStore) -> Order:
        """'OI': Step 1 on [step1] datasets and seeds (through the store); 'A<n>': the random order of seed n."""
        if name != "OI":
            return random_order(
                base.n_layers,
                base.n_heads,
                seed=int(name[1:]),
                name=name,
                model=base.name,
                model_fingerprint=base.fingerprint,
            )
        datasets = self.datasets(self.config.step1.datasets, check_folds=False)
        seeds = self.config.step1_seeds
        rows = {d.name: len(d) for d in datasets}  # the time left weighs each finetuning by its rows
        self.progress.start_stage("Step 1: importance", len(datasets) * len(seeds), sum(rows.values()) * len(seeds))
        order = importance_order(
            base,
            datasets,
            seeds,
            importance_settings(self.config),
            store=store,
            device=self.device,
            on_result=lambda ds, seed, cached: self.progress.advance(cached, work=rows[ds]),
            deadline=self.deadline,
            workers=self.config.step1.workers or (6 if self.device.type == "cuda" else 1),
            loader=self.base_loader(),
            deterministic=self.config.run.deterministic,
        )
        self.progress.end_stage()
        return order

    def orders_for(self, base: BaseModel, store: ResultStore) -> dict[str, Order]:
        orders: dict[str, Order] = {}
        for name in self.config.step2.orders:
            orders[name] = self.order(name, base, store)
            orders[name].save(self.run_dir / "orders" / f"{name}.json")
        return orders

    # ------------------------------------------------------------------ plan
    def plan(self) -> list[dict]:
        """Stages with their number of evaluations (H2/H3: at most)."""
        n_heads = self._n_heads()
        step2 = expand_datasets(self.config.step2.datasets)
        g3 = expand_datasets(self.config.generalization.datasets)
        s1, s2, s3 = self.config.step1_seeds, self.config.step2_seeds, self.config.generalization_seeds
        stages: list[dict] = []
        n_models = 1
        for order in self.config.step2.orders:
            if order == "OI":
                stages.append(
                    {
                        "stage": "Step 1: importance",
                        "finetunings": len(expand_datasets(self.config.step1.datasets)) * len(s1),
                        "evaluations": 0,
                    }
                )
            strategies = self.config.step2.strategies if order == "OI" else self.config.step2.random_order_strategies
            for strategy in strategies:
                n_models += 1
                if strategy == "H1":
                    ks = self._k_values(n_heads)
                    n = len(ks) * len(step2) * len(s2)
                    stages.append({"stage": f"H1 {order}", "evaluations": n})
                else:
                    steps = math.ceil((n_heads - 1) / self.config.step2.group_size)
                    n = steps * len(step2) + len(step2) * len(step2) + (len(step2) if strategy == "H3" else 0)
                    stages.append({"stage": f"{strategy} {order}", "evaluations": n * len(s2), "at_most": True})
        stages.append({"stage": "generalization", "evaluations": n_models * len(g3) * len(s3)})
        return stages

    def _n_heads(self) -> int:
        from transformers import AutoConfig

        from .models import resolve_model_path

        config = AutoConfig.from_pretrained(resolve_model_path(self.config.model.name))
        layers = getattr(config, "headprune_original_layers", None) or config.num_hidden_layers
        return int(layers) * int(config.num_attention_heads)

    def _k_values(self, n_heads: int) -> list[int]:
        step2 = self.config.step2
        if step2.h1_k_values:
            return k_values_from(n_heads, k_values=step2.h1_k_values)
        return k_values_from(n_heads, k_step=step2.h1_k_step if step2.h1_k_step > 1 else None)

    def batched(self) -> bool:
        """Whether evaluations run on the batched engine (in process or as Ray units)."""
        engine = self.config.run.engine
        return engine == "batched" or (engine == "auto" and self.device.type == "cuda")

    def estimate(self, stages: list[dict]) -> dict:
        """Seconds per evaluation on this device, from a short timed calibration of the model: the
        reference loop's step, or on the batched engine a step of a stack as large as Step 2's packs
        (and as the generalization's seed groups), per model."""
        base = self.load_base()
        step2 = [self.dataset(n) for n in expand_datasets(self.config.step2.datasets)]
        g3 = [self.dataset(n) for n in expand_datasets(self.config.generalization.datasets)]
        s1 = [self.dataset(n) for n in expand_datasets(self.config.step1.datasets)]
        step_seconds = calibrate(base, self.settings, self.device)
        model_step = {"step2": step_seconds, "generalization": step_seconds}
        engine = "reference loop"
        if self.batched():
            from .engine import auto_pack_size

            pack = self.config.run.pack_models or auto_pack_size(base.model, self.device)
            sizes = {"step2": min(pack, 64) if self.config.run.pack else len(self.config.step2_seeds),
                     "generalization": len(self.config.generalization_seeds)}
            for name, n in sizes.items():
                model_step[name] = calibrate_batched(base, self.settings, self.device, n)
            engine = f"batched engine, stacks of {sizes['step2']} (Step 2) and {sizes['generalization']} models"
        per_eval = {}
        for name, group in (("step2", step2), ("generalization", g3)):
            halves = [len(d) / 2 for d in group]
            steps = np.mean([math.ceil(h / self.settings.batch_size) for h in halves]) * self.settings.epochs
            # features ~ a third of a training step per batch; SVM ~ 1% of the adjusting time
            per_eval[name] = (steps * model_step[name] * 1.05
                              + np.mean(halves) / self.settings.batch_size * model_step[name] / 3)
        finetune = np.mean([math.ceil(len(d) / self.config.step1.batch_size) for d in s1]) * self.config.step1.epochs
        total = 0.0
        for stage in stages:
            if "finetunings" in stage:
                stage["seconds"] = stage["finetunings"] * finetune * step_seconds * 1.2
            else:
                key = "generalization" if stage["stage"] == "generalization" else "step2"
                stage["seconds"] = stage["evaluations"] * per_eval[key]
            total += stage["seconds"]
        return {"step_seconds": step_seconds, "total_seconds": total, "engine": engine,
                "model_step_seconds": model_step}

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        """Run every stage and write summary.json; returns its content (`Summary.to_json()`)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        started = time.time()
        step2_names = [d.name for d in self.datasets(self.config.step2.datasets)]
        g3_names = [d.name for d in self.datasets(self.config.generalization.datasets)]
        store = ResultStore(self.run_dir / "store.sqlite")
        executor = make_executor(self.config, "step2")
        gen_executor = None
        try:
            base = self.load_base()
            self.progress.log(
                f"model {base.name}: {base.n_layers} layers x {base.n_heads} heads, "
                f"fingerprint {base.fingerprint}, device {self.device}"
            )
            orders = self.orders_for(base, store)
            summary = self._summary_head(base, orders)
            scorer = self.scorer(base, store, self.config.step2_seeds, executor)
            chosen = self._step2(orders, step2_names, scorer, summary)
            # The batched engine (in process or as Ray units) without packing; the reference loop goes on.
            gen_executor = (make_executor(self.config, "generalization")
                            if getattr(executor, "name", "") in ("batched", "ray") else executor)
            gen_scorer = self.scorer(base, store, self.config.generalization_seeds, gen_executor)
            self._generalization(chosen, g3_names, gen_scorer, summary)
        finally:
            for used in {id(e): e for e in (executor, gen_executor) if e is not None}.values():
                close = getattr(used, "close", None)
                if close:
                    close()
            store.close()
        summary.elapsed_seconds = time.time() - started
        path = write_summary(self.run_dir / SUMMARY_FILE, summary)
        chosen_dir = self.run_dir / "chosen"
        chosen_dir.mkdir(exist_ok=True)
        for name, entry in (summary.chosen or {}).items():
            (chosen_dir / f"{name}.json").write_text(json.dumps(entry.to_json(), indent=1) + "\n")
        self.progress.log(f"summary: {path}")
        return summary.to_json()

    def _summary_head(self, base: BaseModel, orders: dict[str, Order]) -> Summary:
        return Summary(
            headprune_version=__version__,
            date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            device=device_description(self.device),
            versions=versions(),
            config=self.config.to_dict(),
            departures=departures(self.config),
            model=ModelInfo(
                name=base.name,
                fingerprint=base.fingerprint,
                n_layers=base.n_layers,
                n_heads=base.n_heads,
                mlm_head=base.info,
            ),
            orders={
                name: OrderEntry(ranked=[tuple(h) for h in o.ranked], matrix=o.matrix, kind=o.kind)
                for name, o in orders.items()
            },
        )

    def _step2(self, orders: dict[str, Order], datasets: list[str], scorer: Scorer,
               summary: Summary) -> dict[str, ChosenModel]:
        """Every (order, strategy) search at once (`search.run_searches`): one executor call per
        round holds all their candidates."""
        chosen = {COMPLETE: ChosenModel(pruned_heads=[], n_pruned=0, strategy=None, order=None)}
        n_heads = len(next(iter(orders.values())).ranked) if orders else 0
        stages = {s["stage"]: s for s in self.plan()}
        group_size = self.config.step2.group_size
        searches = {}
        for name, order in orders.items():
            strategies = self.config.step2.strategies if name == "OI" else self.config.step2.random_order_strategies
            for strategy in strategies:
                if strategy == "H1":
                    ks = self._k_values(n_heads)
                    searches[(name, strategy)] = (
                        lambda ev, o=order, ks=ks: h1_search(o.ranked, datasets, ev, k_values=ks)
                    )
                else:
                    searches[(name, strategy)] = (
                        lambda ev, o=order, f=SEARCHES[strategy]: f(o.ranked, datasets, ev, group_size=group_size)
                    )
        if not searches:
            summary.chosen = chosen
            return chosen
        labels = [f"{strategy} {name}" for name, strategy in searches]
        total = sum(stages[label]["evaluations"] for label in labels)  # every dataset about equally often
        self.progress.start_stage("Step 2: " + ", ".join(labels), total,
                                  total * float(np.mean([self.rows(ds) for ds in datasets])))
        results = run_searches(searches, scorer.evaluate)
        self.progress.set_total(self.progress.done)
        self.progress.end_stage()
        h1: dict[str, H1Result] = {}
        greedy: dict[str, dict[str, GreedyResult]] = {}
        for (name, strategy), result in results.items():
            # search.py returns the JSON parts; they become typed here, at the boundary.
            found: H1Result | GreedyResult
            if strategy == "H1":
                found = h1[name] = H1Result.from_json(result, key=f"h1.{name}")
            else:
                found = GreedyResult.from_json(result, key=f"{strategy.lower()}.{name}")
                if group_size > 1:
                    found.departure = f"{strategy} added heads in groups of {group_size} (paper: one at a time)"
                greedy.setdefault(strategy, {})[name] = found
            pruned = list(found.pruned_heads or [])
            chosen[f"M{name}{strategy}"] = ChosenModel(pruned_heads=pruned, n_pruned=len(pruned),
                                                       strategy=strategy, order=name)
        summary.h1, summary.h2, summary.h3 = h1 or None, greedy.get("H2"), greedy.get("H3")
        summary.chosen = chosen
        return chosen

    def _generalization(self, chosen: dict[str, ChosenModel], datasets: list[str], scorer: Scorer,
                        summary: Summary) -> None:
        seeds = self.config.generalization_seeds
        cells = {(name, ds): scorer.tasks_for([(entry.pruned_heads, ds)])
                 for name, entry in chosen.items() for ds in datasets}
        tasks = [task for cell in cells.values() for task in cell]
        unique = set(tasks)  # chosen models may coincide
        self.progress.start_stage("generalization", len(unique), sum(self.rows(t.dataset) for t in unique))
        results = scorer.run(tasks)
        self.progress.end_stage()
        f1: dict[str, dict[str, list[float]]] = {}
        seconds: dict[str, dict[str, list[float]]] = {}
        for (name, ds), cell in cells.items():
            per_seed = [results[t] for t in cell]
            f1.setdefault(name, {})[ds] = [s.f1 for s in per_seed]
            seconds.setdefault(name, {})[ds] = [s.adjust_seconds for s in per_seed]
            chosen[name].n_params = per_seed[0].n_params
            chosen[name].size_bytes = per_seed[0].size_bytes
        table = summarize(f1, reference=COMPLETE)
        timing = timing_summary(seconds, reference=COMPLETE)
        summary.generalization = Generalization(
            models={m: {ds: DatasetScores.from_json({**table[m][ds], **timing[m][ds]}) for ds in datasets}
                    for m in chosen},
            significance=[Significance.from_json(row)
                          for row in significance(f1, alpha=self.config.generalization.alpha)],
        )
        summary.generalization_seeds = seeds
        cm = chosen[COMPLETE]
        for entry in chosen.values():
            entry.params_pct_vs_cm = 100.0 * (entry.n_params / cm.n_params - 1)
            entry.size_pct_vs_cm = 100.0 * (entry.size_bytes / cm.size_bytes - 1)
        reference = {ds: table[COMPLETE][ds]["mean"] for ds in datasets}
        means: dict[str, RandomMean] = {}
        random_names = sorted({e.order for e in chosen.values() if e.order and e.order != "OI"})
        for strategy in sorted({e.strategy for e in chosen.values() if e.strategy}):
            models = [f"M{o}{strategy}" for o in random_names if f"M{o}{strategy}" in chosen]
            if models:
                means[f"MAM{strategy}"] = RandomMean.from_json(random_means(
                    {m: {ds: table[m][ds]["mean"] for ds in datasets} for m in models},
                    reference,
                    n_pruned={m: chosen[m].n_pruned for m in models},
                ))
        summary.random_means = means


def calibrate(base: BaseModel, settings: ScoreSettings, device: torch.device, steps: int = 3) -> float:
    """Seconds for one adjusting step (batch of `settings.batch_size` tweets of ~30 tokens) on `device`."""
    import copy

    from .scoring import adjust

    model = copy.deepcopy(base.model).to(device)
    texts = ["someuser this is a tweet of typical length about a movie i watched yesterday, loved it!"] * (
        settings.batch_size * (steps + 1)
    )
    ids = encode(base.tokenizer, texts, base.max_length)
    one = ScoreSettings(**{**settings.as_dict(), "epochs": 1})
    adjust(model, base.tokenizer, ids[: settings.batch_size], one, 0, device)  # warm-up of the kernels
    seconds = adjust(model, base.tokenizer, ids[settings.batch_size :], one, 0, device)
    return seconds / steps


def calibrate_batched(base: BaseModel, settings: ScoreSettings, device: torch.device, n_models: int,
                      steps: int = 3) -> float:
    """Seconds of one adjusting step *per model* when `n_models` train together on the batched engine."""
    from .engine import EngineOptions, StackedMLM, adjust_stacked

    texts = ["someuser this is a tweet of typical length about a movie i watched yesterday, loved it!"] * (
        settings.batch_size * steps
    )
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
    stages = pipeline.plan()
    lines = [
        f"plan for {pipeline.config.source or 'configuration'} (model {pipeline.config.model.name}, "
        f"device {pipeline.device}):"
    ]
    estimate = pipeline.estimate(stages) if with_estimate else None
    total = 0
    for stage in stages:
        count = (
            f"{stage['finetunings']} finetunings"
            if "finetunings" in stage
            else f"{'at most ' if stage.get('at_most') else ''}{stage['evaluations']} evaluations"
        )
        total += stage.get("evaluations", 0)
        eta = f"  ~{format_seconds(stage['seconds'])}" if estimate else ""
        lines.append(f"  {stage['stage']:<22s} {count}{eta}")
    lines.append(f"  total: at most {total} evaluations (each = one seed of PRUN_ADJ_EVAL)")
    if estimate:
        lines.append(
            f"  estimate on this device: ~{format_seconds(estimate['total_seconds'])} "
            f"({estimate['engine']}; one adjusting step per model = "
            f"{estimate['model_step_seconds']['step2']:.3f} s; stored evaluations are skipped)"
        )
    return "\n".join(lines)


__all__ = ["Pipeline", "dry_run_text", "HeadpruneError"]
