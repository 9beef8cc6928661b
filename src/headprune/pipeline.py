"""`headprune run`: Step 1 -> Step 2 (H1/H2/H3 for each order) -> generalization check -> summary.json.

Every evaluation goes through the results store, so a rerun of the same configuration resumes
where an interrupted one stopped and recomputes nothing."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .analysis import analyse
from .base import BaseModel
from .config import Config, load_config
from .data import expand_datasets
from .devices import device_description
from .errors import HeadpruneError
from .generalize import comparison, mean_and_std, per_seed_means, random_means, random_order_members
from .heads import HeadSet
from .importance import Order, order_stability
from .names import ModelName
from .progress import RunProgress
from .protocol import departures
from .racing import Race, by_fidelity
from .scorer import Scorer
from .search import H1Strategy, H2Strategy, H3Strategy, k_values_from, run_strategies
from .store import ResultStore
from .summary import (
    COMPLETE,
    SUMMARY_FILE,
    ChosenModel,
    Generalization,
    GreedyResult,
    H1Result,
    ModelInfo,
    OrderEntry,
    RandomMean,
    Stability,
    Summary,
    load_summary,
    write_summary,
)
from .tasks import SeedScore, SeedTask
from .workspace import Workspace

SEARCHES = {"H2": H2Strategy, "H3": H3Strategy}
TIMING_SEEDS = 3  # Table 14 under the batched engine: each model timed alone on this many seeds
INFERENCE_THREADS = 1  # CPU inference timing of the chosen models (speed.measure)


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


class Pipeline:
    """The whole method for one configuration and run directory."""

    def __init__(self, config: Config, run_dir: str | Path, progress: RunProgress | None = None,
                 deadline: float | None = None, workspace: Workspace | None = None):
        # The workspace (device, datasets, base model, executors, scorers) holds the configuration.
        self.workspace = workspace or Workspace(config, progress, deadline)
        self.run_dir = Path(run_dir)
        self.budget: dict | None = None  # `run --budget`'s choice, recorded in the summary (budget.Choice.record)

    @property
    def config(self) -> Config:
        return self.workspace.config  # `Workspace.check_engine` may replace it

    @property
    def device(self) -> torch.device:
        return self.workspace.device

    @property
    def progress(self) -> RunProgress:
        return self.workspace.progress

    def orders_for(self, base: BaseModel, store: ResultStore) -> dict[str, Order]:
        orders: dict[str, Order] = {}
        for name in self.config.step2.orders:
            orders[name] = self.workspace.order(name, base, store)
            orders[name].save(self.run_dir / "orders" / f"{name}.json")
        return orders

    # ------------------------------------------------------------------ plan
    def k_values(self, n_heads: int) -> list[int]:
        """The k values H1 tries: [step2] h1_k_values, or every k (h1_k_step: every n-th)."""
        step2 = self.config.step2
        if step2.h1_k_values:
            return k_values_from(n_heads, k_values=step2.h1_k_values)
        return k_values_from(n_heads, k_step=step2.h1_k_step if step2.h1_k_step > 1 else None)

    def search_evaluations(self, strategy: str, n_heads: int) -> int:
        """Evaluations (seeds included) one order's H1 search makes, or its H2/H3 search at most: the
        progress total of Step 2 and the dry run's plan (`plan.plan`) count the same way."""
        n_datasets = len(expand_datasets(self.config.step2.datasets))
        n_seeds = len(self.config.step2_seeds)
        if strategy == "H1":
            return len(self.k_values(n_heads)) * n_datasets * n_seeds
        steps = math.ceil((n_heads - 1) / self.config.step2.group_size)
        n = steps * n_datasets + n_datasets * n_datasets + (n_datasets if strategy == "H3" else 0)
        return n * n_seeds

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        """Run every stage and write summary.json; returns its content (`Summary.to_json()`)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        started = time.time()
        work = self.workspace
        step2_names = [d.name for d in work.datasets(self.config.step2.datasets)]
        g3_names = [d.name for d in work.datasets(self.config.generalization.datasets)]
        store = ResultStore(self.run_dir / "store.sqlite")
        executor = gen_executor = None
        try:
            base = work.load_base()
            self.progress.log(
                f"model {base.name}: {base.n_layers} layers x {base.n_heads} heads, "
                f"fingerprint {base.fingerprint}, device {self.device}"
            )
            work.check_engine(base)
            executor = work.executor("step2")
            orders = self.orders_for(base, store)
            summary = self._summary_head(base, orders)
            scorer = work.scorer(base, store, self.config.step2_seeds, executor)
            chosen = self._step2(orders, step2_names, scorer, summary)
            random_orders = {name for name, order in orders.items() if order.kind == "random"}
            summary.step2_comparison = self._step2_comparison(
                chosen, step2_names, scorer, random_orders, "Tables 7-10: the chosen models on G2")
            self._h1_seed_scores(orders, scorer, summary)  # after the comparison: it may score H1's cells too
            fresh = self.config.step2_fresh_seeds
            if fresh:  # after H1's per-seed scores, which must read only the selection seeds
                summary.step2_fresh_comparison = self._step2_comparison(
                    chosen, step2_names, work.scorer(base, store, fresh, executor), random_orders,
                    "G2 on fresh seeds: the chosen models on seeds no selection used")
                summary.step2_fresh_seeds = fresh if summary.step2_fresh_comparison is not None else None
            gen_executor = work.executor("generalization")  # never packs
            gen_scorer = work.scorer(base, store, self.config.generalization_seeds, gen_executor)
            self._generalization(chosen, g3_names, gen_scorer, summary, random_orders)
            summary.inference = self._inference_speed(base, chosen)
            analyse(summary, self.config.generalization.alpha, self.config.generalization.safe_k_margin)
        finally:
            for used in (e for e in (gen_executor, executor) if e is not None):
                used.close()
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
            date=datetime.now(UTC).isoformat(timespec="seconds"),
            device=device_description(self.device),
            versions=versions(),
            config=self.config.to_dict(),
            budget=self.budget,
            departures=departures(self.config, self.device.type, base.info.get("fresh_mlm_head")),
            model=ModelInfo(
                name=base.name,
                fingerprint=base.fingerprint,
                n_layers=base.n_layers,
                n_heads=base.n_heads,
                mlm_head=base.info,
            ),
            orders={
                name: OrderEntry(ranked=[tuple(h) for h in o.ranked], matrix=o.matrix, kind=o.kind, settings=o.settings,
                                 dataset_hashes=o.dataset_hashes,
                                 stability=Stability.from_json(order_stability(o, self.k_values(len(o.ranked))),
                                                               key=f"orders.{name}.stability"))
                for name, o in orders.items()
            },
        )

    def _h1_seed_scores(self, orders: dict[str, Order], scorer: Scorer, summary: Summary) -> None:
        """Beside each H1 mean, its per-seed F1 (`H1Result.seed_scores`), for the paired tests of the
        report's "Which order prunes best". Only looked up in the store the search filled, never
        computed. A seed the search's race did not give a candidate is null (`Racing.scored_seeds`),
        even where the store holds it (e.g. from a run of the complete grid), so that every order's
        candidates are judged on the seeds their own race gave them; a cell with no seed is left out
        (a screened race's candidates dropped at the low fidelity). Read after the G2 comparison,
        which scores the complete model (H1's k = 0) on every seed."""
        for name, entry in (summary.h1 or {}).items():
            cells: dict[str, dict[str, list[float | None]]] = {}
            for ds, per_k in entry.scores.items():
                for k in per_k:
                    given = entry.seeds_given(int(k), scorer.seeds)
                    tasks = scorer.tasks_for([(orders[name].least_important(int(k)), ds)])
                    found = [None if task.seed not in given or (score := scorer.lookup(task)) is None else score.f1
                             for task in tasks]
                    if any(f is not None for f in found):
                        cells.setdefault(ds, {})[k] = found
            entry.seeds, entry.seed_scores = list(scorer.seeds), cells

    def _step2(self, orders: dict[str, Order], datasets: list[str], scorer: Scorer,
               summary: Summary) -> dict[str, ChosenModel]:
        """Every (order, strategy) search at once (`search.run_strategies`): one executor call per
        round holds all their candidates."""
        chosen = {COMPLETE: ChosenModel(pruned_heads=[], n_pruned=0, strategy=None, order=None)}
        n_heads = len(next(iter(orders.values())).ranked) if orders else 0
        group_size = self.config.step2.group_size
        searches = {}
        for name, order in orders.items():
            strategies = (self.config.step2.strategies if order.kind != "random"
                          else self.config.step2.random_order_strategies)
            for strategy in strategies:
                if strategy == "H1":
                    searches[(name, strategy)] = H1Strategy(order.ranked, datasets, k_values=self.k_values(n_heads))
                else:
                    searches[(name, strategy)] = SEARCHES[strategy](order.ranked, datasets, group_size=group_size)
        if not searches:
            summary.chosen = chosen
            return chosen
        labels = [f"{strategy} {name}" for name, strategy in searches]
        total = sum(self.search_evaluations(s, n_heads) for _, s in searches)  # every dataset about equally often
        step2 = self.config.step2
        raced = step2.racing
        self.progress.start_stage("Step 2: " + ", ".join(labels) + (" (raced: at most)" if raced else ""), total,
                                  total * float(np.mean([self.workspace.rows(ds) for ds in datasets])))
        if raced:
            settings = step2.racing_settings()
            screen = step2.racing_screen or None
            low = None
            if screen is not None:  # "no-adjust": the same scores without the adjusting step
                low = self.workspace.scorer(scorer.base, scorer.store, scorer.seeds, scorer.executor,
                                            settings=replace(self.config.scoring, epochs=0)).evaluate_seeds
            races = {key: Race(search, scorer.seeds, settings, screen=screen) for key, search in searches.items()}
            results = run_strategies(races, by_fidelity(scorer.evaluate_seeds, low))
        else:
            results = run_strategies(searches, scorer.evaluate)
            for key, result in results.items():  # the full protocol: every request with every seed
                result["evaluations"] = result["grid_evaluations"] = len(searches[key].asked) * len(scorer.seeds)
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
            chosen[ModelName.chosen(name, strategy).label] = ChosenModel(
                pruned_heads=pruned, n_pruned=len(pruned), strategy=strategy, order=name)
        summary.h1, summary.h2, summary.h3 = h1 or None, greedy.get("H2"), greedy.get("H3")
        summary.chosen = chosen
        return chosen

    def _inference_speed(self, base: BaseModel, chosen: dict[str, ChosenModel]) -> dict[str, dict]:
        """What a deployed encoder gains (Table 13's companion): each chosen model's CPU inference,
        physically pruned, timed side by side with the others (`speed.measure`: batch-1 latency on a
        typical tweet, batch-32 throughput), on `INFERENCE_THREADS` threads so that the numbers do not
        hinge on what else the machine runs; the speed-ups are against CM measured in the same rounds."""
        from .deploy import graph_of
        from .scoring import pruned_copy
        from .speed import inference_inputs, load_average, measure

        sets = {HeadSet(entry.pruned_heads) for entry in chosen.values()}
        forwards = {heads: graph_of(pruned_copy(base.model, heads), "encoder") for heads in sets}
        single, batch = inference_inputs(base.tokenizer, base.model.config)
        self.progress.log(f"inference speed of {len(forwards)} pruned sets (CPU, {INFERENCE_THREADS} thread)")
        threads = torch.get_num_threads()
        torch.set_num_threads(INFERENCE_THREADS)
        try:
            speeds = measure(forwards, single, batch, budget_s=3.0 * len(forwards))
        finally:
            torch.set_num_threads(threads)
        load = load_average()
        cm = speeds[HeadSet(chosen[COMPLETE].pruned_heads)]
        out = {}
        for name, entry in chosen.items():
            speed = speeds[HeadSet(entry.pruned_heads)]
            out[name] = {**speed.to_json(), "threads": INFERENCE_THREADS, "device": "cpu", "load_average": load,
                         "p50_speedup": cm.p50_ms / speed.p50_ms,
                         "throughput_speedup": speed.per_second / cm.per_second}
        return out

    def _per_seed(self, chosen: dict[str, ChosenModel], datasets: list[str], scorer: Scorer, stage: str
                  ) -> tuple[dict[tuple[str, str], list[SeedTask]], dict[SeedTask, SeedScore]]:
        """Every chosen model on every dataset with the scorer's seeds (one batch; coinciding models once)."""
        cells = {(name, ds): scorer.tasks_for([(entry.pruned_heads, ds)])
                 for name, entry in chosen.items() for ds in datasets}
        tasks = [task for cell in cells.values() for task in cell]
        unique = set(tasks)
        self.progress.start_stage(stage, len(unique), sum(self.workspace.rows(t.dataset) for t in unique))
        results = scorer.run(tasks)
        self.progress.end_stage()
        return cells, results

    def _step2_comparison(self, chosen: dict[str, ChosenModel], datasets: list[str], scorer: Scorer,
                          random_orders: set[str], stage: str) -> Generalization | None:
        """CM, the models of the importance orders and the per-seed means over the random orders
        (MAM<strategy>) on the Step 2 datasets, over the scorer's seeds, with paired t-tests: Tables
        7-10 with the Step 2 seeds (the searches stored these scores already; only what is missing is
        computed), or the fresh-seed comparison with `step2.fresh_seeds`. None with no model but CM."""
        if len(chosen) < 2:
            return None
        cells, results = self._per_seed(chosen, datasets, scorer, stage)
        f1 = {name: {ds: [results[t].f1 for t in cells[(name, ds)]] for ds in datasets} for name in chosen}
        members = random_order_members({n: (e.order, e.strategy) for n, e in chosen.items()}, random_orders)
        shown = {n: v for n, v in f1.items() if chosen[n].order not in random_orders}
        table = comparison({**shown, **per_seed_means(f1, members)}, reference=COMPLETE,
                           alpha=self.config.generalization.alpha)
        return Generalization.from_json(table, key="step2_comparison")

    def _generalization(self, chosen: dict[str, ChosenModel], datasets: list[str], scorer: Scorer,
                        summary: Summary, random_orders: set[str]) -> None:
        """The generalization check (Tables 12, 13, 14, 15): every chosen model on G3, the per-seed
        means over the random orders (MAM<strategy>) beside them, paired t-tests between all.

        Table 14 is what one finetuning of each model costs on this device: with the reference loop
        that is each score's own adjusting time; the batched engine trains a candidate's seeds in one
        stack, whose wall time every seed shares, so each model is then also timed adjusting alone
        (physically pruned, the reference loop) on the first `TIMING_SEEDS` seeds, and the stack's
        times are kept beside as the engine's throughput."""
        seeds = self.config.generalization_seeds
        cells, results = self._per_seed(chosen, datasets, scorer, "generalization")
        f1 = {name: {ds: [results[t].f1 for t in cells[(name, ds)]] for ds in datasets} for name in chosen}
        seconds = {name: {ds: [results[t].adjust_seconds for t in cells[(name, ds)]] for ds in datasets}
                   for name in chosen}
        engine_seconds: dict[str, dict[str, list[float]]] | None = None
        timed_seeds: list[int] | None = None
        if scorer.executor.store_tag is not None:
            timed_seeds = list(seeds[:TIMING_SEEDS])
            timed = {cell: [t for t in tasks if t.seed in timed_seeds] for cell, tasks in cells.items()}
            unique = {t for tasks in timed.values() for t in tasks}
            self.progress.start_stage("Table 14: each model adjusting alone", len(unique),
                                      sum(self.workspace.rows(t.dataset) for t in unique))
            timing = self.workspace.executor("timing")
            try:
                times = scorer.adjust_times([t for tasks in timed.values() for t in tasks], timing)
            finally:
                timing.close()
            self.progress.end_stage()
            engine_seconds = seconds
            seconds = {name: {ds: [times[t] for t in timed[(name, ds)]] for ds in datasets} for name in chosen}
        for name in chosen:
            first = results[cells[(name, datasets[0])][0]]
            chosen[name].n_params, chosen[name].size_bytes = first.n_params, first.size_bytes
        members = random_order_members({n: (e.order, e.strategy) for n, e in chosen.items()}, random_orders)
        table = comparison({**f1, **per_seed_means(f1, members)}, {**seconds, **per_seed_means(seconds, members)},
                           reference=COMPLETE, alpha=self.config.generalization.alpha)
        if timed_seeds is not None:
            for name, row in table.items():
                if name == "significance":
                    continue
                for ds, cell in row.items():
                    cell["adjust_seeds"] = timed_seeds
                    if name in engine_seconds:
                        cell["engine_adjust_seconds"] = engine_seconds[name][ds]
                        cell["engine_adjust_mean"], cell["engine_adjust_std"] = mean_and_std(engine_seconds[name][ds])
        summary.generalization = Generalization.from_json(table, key="generalization")
        summary.generalization_seeds = seeds
        cm = chosen[COMPLETE]
        for entry in chosen.values():
            entry.params_pct_vs_cm = 100.0 * (entry.n_params / cm.n_params - 1)
            entry.size_pct_vs_cm = 100.0 * (entry.size_bytes / cm.size_bytes - 1)
        reference = {ds: table[COMPLETE][ds]["mean"] for ds in datasets}
        summary.random_means = {
            name: RandomMean.from_json(random_means(
                {m: {ds: table[m][ds]["mean"] for ds in datasets} for m in models}, reference,
                n_pruned={m: chosen[m].n_pruned for m in models}))
            for name, models in members.items()
        }



def run(config: Config | str | os.PathLike, run_dir: str | os.PathLike, progress: RunProgress | None = None
        ) -> Summary:
    """The whole method, as `headprune run` does: Step 1, Step 2 and the generalization check of
    `config` (a `Config`, or the path of its TOML file) into `run_dir`; returns the summary it wrote."""
    if not isinstance(config, Config):
        config = load_config(config)
    Pipeline(config, run_dir, progress).run()
    return load_summary(run_dir)


__all__ = ["HeadpruneError", "Pipeline", "run"]
