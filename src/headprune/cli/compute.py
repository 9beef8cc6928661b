"""Commands of the method: datasets, importance, score, run.

Plain functions; `app.py` registers them, so this module never sees the app."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import typer

from ..errors import HeadpruneError
from .options import DATA_DIR, DEVICE, LABEL_COLUMN, MODEL, RUN_DIR, TEXT_COLUMN

WARMUP = typer.Option(300, "--warmup-steps", help="Warm-up steps of a fresh MLM head (0 = none).")


def datasets_command(
    spec: str = typer.Argument("G1,G2,G3", help="Datasets or groups, comma-separated."),
    data_dir: Path = DATA_DIR,
    text_column: str = TEXT_COLUMN,
    label_column: str = LABEL_COLUMN,
) -> None:
    """List datasets with their size and classes (checks that they load)."""
    from ..data import expand_datasets, load_dataset

    for name in expand_datasets(spec):
        ds = load_dataset(name, text_column=text_column, label_column=label_column, data_dir=data_dir)
        counts = ", ".join(f"{c}={n}" for c, n in ds.class_counts().items())
        typer.echo(f"{ds.name:18s} {len(ds):6d}  {counts}")


def _seeds(spec: str, option: str) -> list[int]:
    from ..config import parse_seeds

    return parse_seeds(spec, option)


def _pipeline_for(
    model: str,
    run_dir: Path,
    data_dir,
    text_column: str,
    label_column: str,
    device: str,
    warmup_steps: int,
    epochs: int,
):
    """The pipeline of `importance` and `score`: their shared options over the defaults."""
    from ..config import Config
    from ..pipeline import Pipeline

    if epochs < 1:
        raise HeadpruneError(f"--epochs must be at least 1, got {epochs}")
    config = Config()
    config.model.name = model
    config.model.mlm_head_warmup_steps = warmup_steps
    config.data.data_dir = str(data_dir) if data_dir else ""
    config.data.text_column, config.data.label_column = text_column, label_column
    config.run.device = device
    config.scoring = replace(config.scoring, epochs=epochs)
    config.step1.epochs = epochs
    return Pipeline(config, run_dir)


def importance_command(
    model: str = MODEL,
    datasets: str = typer.Option("G1", "--datasets", help="Datasets or groups for Step 1, comma-separated."),
    seeds: str = typer.Option("1-10", "--seeds", help="Seeds, e.g. 1-10 or 1,2,3."),
    epochs: int = typer.Option(4, "--epochs", help="Finetuning epochs (paper: 4)."),
    criterion: str = typer.Option("OI", "--criterion", help="The order to write: OI (Step 1, the dissertation's), "
                                  "OI-layer (its gradients normalised per layer), fisher (squared gradients; the "
                                  "three share Step 1's finetunings), magnitude (weight norms, no data)."),
    random: int = typer.Option(0, "--random", help="Instead of Step 1, write the seeded random order A<N>."),
    out: Path = typer.Option(Path("order.json"), "--out", help="Where to write the order (JSON)."),
    run_dir: Path = RUN_DIR,
    data_dir: Path = DATA_DIR,
    text_column: str = TEXT_COLUMN,
    label_column: str = LABEL_COLUMN,
    device: str = DEVICE,
    warmup_steps: int = WARMUP,
) -> None:
    """Step 1: the importance order of the heads by a criterion (or a seeded random order with --random N)."""
    from ..importance import criterion_for
    from ..store import ResultStore

    pipeline = _pipeline_for(model, run_dir, data_dir, text_column, label_column, device, warmup_steps, epochs)
    pipeline.config.step1.datasets = [datasets]
    pipeline.config.step1.seeds = _seeds(seeds, "--seeds")
    name = f"A{random}" if random else criterion
    if criterion_for(name).kind == "importance":
        pipeline.datasets([datasets], check_folds=False)  # bad names and files fail before any model work
    base = pipeline.load_base()
    order = pipeline.order(name, base, ResultStore(run_dir / "store.sqlite"))
    order.save(out)
    least = ", ".join(f"{l}:{h}" for l, h in order.ranked[-5:][::-1])
    typer.echo(f"wrote {out}: {len(order.ranked)} heads ranked; least important first: {least}")


def score_command(
    model: str = MODEL,
    dataset: str = typer.Option(..., "--dataset", help="Dataset name, group, or a CSV/TSV/JSONL file."),
    prune: str = typer.Option("", "--prune", help="Heads to prune, e.g. '0:1,2;3:*' (original coordinates)."),
    order: Path = typer.Option(None, "--order", help="An order JSON (with --k): prune its k least important heads."),
    k: int = typer.Option(None, "--k", help="With --order: how many heads to prune."),
    seeds: str = typer.Option("1", "--seeds", help="Seeds, e.g. 1-3."),
    epochs: int = typer.Option(4, "--epochs", help="Adjusting epochs (paper: 4)."),
    run_dir: Path = RUN_DIR,
    data_dir: Path = DATA_DIR,
    text_column: str = TEXT_COLUMN,
    label_column: str = LABEL_COLUMN,
    device: str = DEVICE,
    warmup_steps: int = WARMUP,
) -> None:
    """PRUN_ADJ_EVAL: score one pruned model on datasets (F1-macro per seed), through the run's store."""
    from ..importance import Order
    from ..store import ResultStore
    from ..surgery import format_head_spec, parse_head_spec

    seed_list = _seeds(seeds, "--seeds")
    pipeline = _pipeline_for(model, run_dir, data_dir, text_column, label_column, device, warmup_steps, epochs)
    # Validates files, columns and class sizes before any model work.
    names = [d.name for d in pipeline.datasets([dataset])]
    if order is not None and prune:
        raise HeadpruneError("give either --prune or --order/--k, not both")
    base = pipeline.load_base()
    if order is not None:
        if k is None:
            raise HeadpruneError("--order needs --k (how many of the least important heads to prune)")
        loaded = Order.load(order)
        if (loaded.n_layers, loaded.n_heads) != (base.n_layers, base.n_heads):
            raise HeadpruneError(
                f"--order {order}: made for {loaded.n_layers}x{loaded.n_heads} heads, "
                f"the model has {base.n_layers}x{base.n_heads}"
            )
        if not 0 <= k < base.n_total_heads:
            raise HeadpruneError(f"--k must be between 0 and {base.n_total_heads - 1}, got {k}")
        heads = loaded.least_important(k)
    else:
        spec = parse_head_spec(prune, base.n_layers, base.n_heads)
        heads = [(l, h) for l, hs in spec.items() for h in hs]
    if len(set(heads)) >= base.n_total_heads:
        raise HeadpruneError("--prune: cannot prune every head of the model: at least one head must remain")
    store = ResultStore(run_dir / "store.sqlite")
    from ..pipeline import make_executor

    pipeline.check_engine(base)
    scorer = pipeline.scorer(base, store, seed_list, executor=make_executor(pipeline.config))
    spec_text = format_head_spec({l: [h for ll, h in heads if ll == l] for l, _ in heads}, base.n_heads) or "none"
    typer.echo(f"model {base.name} ({base.fingerprint}), pruning {len(set(heads))} heads: {spec_text}")
    for name in names:
        pipeline.progress.start_stage(f"score {name}", len(seed_list))
        result = scorer.score(heads, name)
        pipeline.progress.end_stage()
        per_seed = ", ".join(f"{s}: {f:.4f}" for s, f in zip(result.seeds, result.scores))
        typer.echo(
            f"{name}: F1-macro {result.mean:.4f} (std {result.std:.4f}) over seeds [{per_seed}]; "
            f"adjusting {np.mean(result.adjust_seconds):.1f} s; {result.n_params:,} parameters; "
            f"{result.size_bytes / 2**20:.1f} MiB"
        )


def run_command(
    config: Path = typer.Option(..., "--config", help="A TOML configuration (see configs/)."),
    run_dir: Path = typer.Option(None, "--run-dir", help="Run directory (default runs/<config name>)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and a time estimate; compute nothing."),
    executor: str = typer.Option(None, "--executor", help="in-process or ray (overrides the configuration)."),
    address: str = typer.Option(None, "--address", help="Ray address: auto or HOST:PORT (with --executor ray)."),
    device: str = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N (overrides the configuration)."),
    model: str = typer.Option(None, "--model", help="Model name, directory or hub id (overrides [model] name)."),
    data_dir: Path = typer.Option(
        None, "--data-dir", help="Folder of the bundled datasets (overrides [data] data_dir)."
    ),
    time_limit: float = typer.Option(
        None, "--time-limit", min=0.0,
        help="Minutes: then finish the evaluations in flight, start no new one, and exit 3 (rerun to go on).",
    ),
) -> None:
    """The whole method: Step 1 -> Step 2 -> generalization check -> summary.json and report."""
    from ..config import load_config, validate
    from ..pipeline import Pipeline
    from ..plan import dry_run_text

    cfg = load_config(config)
    if executor is not None:
        cfg.run.executor = executor
    if address is not None:
        cfg.run.address = address
    if device is not None:
        cfg.run.device = device
    if model is not None:
        cfg.model.name = model
    if data_dir is not None:
        cfg.data.data_dir = str(data_dir)
    validate(cfg, "")
    run_dir = run_dir or Path("runs") / config.stem
    deadline = time.monotonic() + 60 * time_limit if time_limit is not None else None
    pipeline = Pipeline(cfg, run_dir, deadline=deadline)
    if dry_run:
        typer.echo(dry_run_text(pipeline))
        return
    pipeline.run()
    if cfg.run.report:
        from ..report import write_report

        path = write_report(run_dir)
        typer.echo(f"report: {path}")
