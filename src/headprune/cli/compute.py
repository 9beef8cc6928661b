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
    fetch: Path = typer.Option(
        None, "--fetch", help="Download the 22 bundled datasets into this folder first (checked by SHA-256); "
                              "then pass it as --data-dir or $HEADPRUNE_DATA.",
    ),
    fetch_from: str = typer.Option(None, "--fetch-from", help="Where --fetch downloads from (a mirror's URL)."),
) -> None:
    """List datasets with their size and classes (checks that they load); --fetch DIR downloads them."""
    from ..data import expand_datasets, load_dataset

    if fetch is not None:
        from ..fetch import SOURCE, fetch_datasets

        data_dir = fetch_datasets(fetch, fetch_from or SOURCE, report=typer.echo)
        typer.echo(f"datasets in {data_dir}: use --data-dir {data_dir} or set HEADPRUNE_DATA={data_dir}")
    for name in expand_datasets(spec):
        ds = load_dataset(name, text_column=text_column, label_column=label_column, data_dir=data_dir)
        counts = ", ".join(f"{c}={n}" for c, n in ds.class_counts().items())
        typer.echo(f"{ds.name:18s} {len(ds):6d}  {counts}")


def _seeds(spec: str, option: str) -> list[int]:
    from ..config import parse_seeds

    return parse_seeds(spec, option)


def _workspace_for(
    model: str,
    data_dir,
    text_column: str,
    label_column: str,
    device: str,
    warmup_steps: int,
    epochs: int,
    step1_datasets: list[str] | None = None,
    step1_seeds: list[int] | None = None,
):
    """The workspace of `importance` and `score`: their shared options over the defaults."""
    from ..config import Config
    from ..workspace import Workspace

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
    if step1_datasets is not None:
        config.step1.datasets = step1_datasets
    if step1_seeds is not None:
        config.step1.seeds = step1_seeds
    return Workspace(config)


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

    work = _workspace_for(model, data_dir, text_column, label_column, device, warmup_steps, epochs,
                          step1_datasets=[datasets], step1_seeds=_seeds(seeds, "--seeds"))
    name = f"A{random}" if random else criterion
    if criterion_for(name).kind == "importance":
        work.datasets([datasets], check_folds=False)  # bad names and files fail before any model work
    base = work.load_base()
    order = work.order(name, base, ResultStore(run_dir / "store.sqlite"))
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
    from ..heads import HeadSet
    from ..importance import Order
    from ..store import ResultStore

    seed_list = _seeds(seeds, "--seeds")
    work = _workspace_for(model, data_dir, text_column, label_column, device, warmup_steps, epochs)
    # Validates files, columns and class sizes before any model work.
    names = [d.name for d in work.datasets([dataset])]
    if order is not None and prune:
        raise HeadpruneError("give either --prune or --order/--k, not both")
    base = work.load_base()
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
        heads = HeadSet(loaded.least_important(k))
    else:
        heads = HeadSet.parse(prune, base.n_layers, base.n_heads)
    if len(heads) >= base.n_total_heads:
        raise HeadpruneError("--prune: cannot prune every head of the model: at least one head must remain")
    store = ResultStore(run_dir / "store.sqlite")
    work.check_engine(base)
    scorer = work.scorer(base, store, seed_list, executor=work.executor("step2"))
    spec = heads.spec(base.n_heads) or "none"
    typer.echo(f"model {base.name} ({base.fingerprint}), pruning {len(heads)} heads: {spec}")
    for name in names:
        work.progress.start_stage(f"score {name}", len(seed_list))
        result = scorer.score(heads, name)
        work.progress.end_stage()
        per_seed = ", ".join(f"{s}: {f:.4f}" for s, f in zip(result.seeds, result.scores))
        typer.echo(
            f"{name}: F1-macro {result.mean:.4f} (std {result.std:.4f}) over seeds [{per_seed}]; "
            f"adjusting {np.mean(result.adjust_seconds):.1f} s; {result.n_params:,} parameters; "
            f"{result.size_bytes / 2**20:.1f} MiB"
        )


def profiles_command() -> None:
    """List the shipped profiles (`headprune run --profile NAME`), the budget's ladder first."""
    from ..profiles import DEFAULT_PROFILE, LADDER, profile_description, profile_names

    for name in profile_names():
        marks = [m for m, on in (("default", name == DEFAULT_PROFILE), ("--budget", name in LADDER)) if on]
        typer.echo(f"{name:14s} {profile_description(name)}" + (f"  [{', '.join(marks)}]" if marks else ""))


ROLE_HELP = "Overrides {key}: {what}. Repeat, or separate with commas; files or bundled names/groups (G1)."


def run_command(
    config: Path = typer.Option(None, "--config", help="A TOML configuration file: full control."),
    profile: str = typer.Option(
        None, "--profile", help="A shipped profile (`headprune profiles`); default quick, unless --config or --budget."
    ),
    model: str = typer.Option(None, "--model", help="Overrides model.name: hub id, local directory or 'minilm'."),
    data: list[str] = typer.Option(
        None, "--data",
        help="Your datasets (CSV/TSV/JSONL) or bundled names: they fill every role not named by "
             "--step1-datasets/--step2-datasets/--generalization-datasets. Repeat for more.",
    ),
    step1_datasets: list[str] = typer.Option(
        None, "--step1-datasets", help=ROLE_HELP.format(key="step1.datasets", what="the head importance order"),
    ),
    step2_datasets: list[str] = typer.Option(
        None, "--step2-datasets", help=ROLE_HELP.format(key="step2.datasets", what="the search for pruned models"),
    ),
    generalization_datasets: list[str] = typer.Option(
        None, "--generalization-datasets",
        help=ROLE_HELP.format(key="generalization.datasets", what="the chosen models against the complete one"),
    ),
    text_column: str = typer.Option(None, "--text-column", help="Overrides data.text_column (default tweet)."),
    label_column: str = typer.Option(None, "--label-column", help="Overrides data.label_column (default class)."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Overrides data.data_dir: folder of the bundled datasets."),
    executor: str = typer.Option(None, "--executor", help="Overrides run.executor: in-process or ray."),
    address: str = typer.Option(None, "--address", help="Overrides run.address: Ray's, auto or HOST:PORT."),
    device: str = typer.Option(None, "--device", help="Overrides run.device: auto, cpu, cuda, cuda:N."),
    settings: list[str] = typer.Option(
        None, "--set", help="SECTION.KEY=VALUE: any configuration key, e.g. --set step2.seeds=1-3. Repeat for more.",
    ),
    run_dir: Path = typer.Option(None, "--run-dir", help="Run directory (default runs/<profile or config name>)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and a time estimate; compute nothing."),
    time_limit: float = typer.Option(
        None, "--time-limit", min=0.0,
        help="Minutes: then finish the evaluations in flight, start no new one, and exit 3 (rerun to go on).",
    ),
    budget: str = typer.Option(
        None, "--budget",
        help="A duration (45m, 2h): run the most faithful profile whose estimate on this machine fits, and stop "
             "at the budget as --time-limit does.",
    ),
) -> None:
    """The whole method: Step 1 -> Step 2 -> generalization check -> summary.json and report.
    Writes RUN_DIR/config.toml, the configuration used: `--config RUN_DIR/config.toml` reruns it."""
    from ..overrides import dataset_items, parse_assignment, role_overrides

    started = time.monotonic()
    chosen_by = [flag for flag, given in (("--config", config), ("--profile", profile), ("--budget", budget)) if given]
    if len(chosen_by) > 1:
        raise HeadpruneError(f"{' and '.join(chosen_by)}: give one (--budget chooses the profile itself)")
    if budget is not None and time_limit is not None:
        raise HeadpruneError("--budget and --time-limit: give one (--budget stops at the budget)")
    named = {f"{role}.datasets": dataset_items(items) for role, items in
             (("step1", step1_datasets), ("step2", step2_datasets), ("generalization", generalization_datasets))}
    overrides: dict = {
        "model.name": model, "data.text_column": text_column, "data.label_column": label_column,
        "data.data_dir": str(data_dir.resolve()) if data_dir is not None else None,
        "run.executor": executor, "run.address": address, "run.device": device,
        **role_overrides(dataset_items(data), named),
    }
    overrides.update(parse_assignment(text) for text in settings or [])
    if budget is not None:
        _run_on_budget(budget, overrides, run_dir, dry_run, started)
        return
    cfg = _base_config(config, profile, overrides)
    deadline = started + 60 * time_limit if time_limit is not None else None
    _run(cfg, run_dir or Path("runs") / _run_name(config, profile), dry_run, deadline)


def _run_name(config: Path | None, profile: str | None) -> str:
    from ..profiles import DEFAULT_PROFILE

    return config.stem if config is not None else profile or DEFAULT_PROFILE


def _base_config(config: Path | None, profile: str | None, overrides: dict):
    """The configuration file or the profile (default: `DEFAULT_PROFILE`), with the options' keys."""
    from ..config import load_config
    from ..overrides import with_overrides
    from ..profiles import DEFAULT_PROFILE, load_profile

    base = load_config(config) if config is not None else load_profile(profile or DEFAULT_PROFILE)
    return with_overrides(base, overrides)


def _run(cfg, run_dir: Path, dry_run: bool, deadline: float | None, budget: dict | None = None) -> None:
    from ..pipeline import Pipeline
    from ..plan import dry_run_text

    pipeline = Pipeline(cfg, run_dir, deadline=deadline)
    if dry_run:
        typer.echo(dry_run_text(pipeline))
        return
    _write_config(cfg, run_dir)
    pipeline.budget = budget
    pipeline.run()
    if cfg.run.report:
        from ..report import write_report

        path = write_report(run_dir)
        typer.echo(f"report: {path}")


def _write_config(cfg, run_dir: Path) -> None:
    """RUN_DIR/config.toml: every key of the configuration the run uses, so it reruns and can be edited."""
    from ..overrides import to_toml

    run_dir.mkdir(parents=True, exist_ok=True)
    comment = (f"The configuration of this run (from {cfg.source or 'options'} and the command's options).\n"
               f"Rerun or edit: headprune run --config {run_dir / 'config.toml'} --run-dir {run_dir}")
    (run_dir / "config.toml").write_text(to_toml(cfg, comment), encoding="utf-8")


def _run_on_budget(text: str, overrides: dict, run_dir: Path | None, dry_run: bool, started: float) -> None:
    """--budget: estimate the ladder's profiles (most faithful first), print the choice, its plan and
    departures, then run it with the budget as the deadline."""
    from ..budget import choose, parse_budget
    from ..overrides import with_overrides
    from ..pipeline import Pipeline
    from ..plan import dry_run_text
    from ..profiles import LADDER, load_profile
    from ..progress import format_seconds
    from ..protocol import departures

    seconds = parse_budget(text)
    candidates = {name: Pipeline(with_overrides(load_profile(name), overrides), run_dir or Path("runs") / name)
                  for name in LADDER}
    choice = choose(candidates, seconds)
    estimates = ", ".join(f"{name} ~{format_seconds(s)}" for name, s in choice.estimates.items())
    typer.echo(f"budget {text}: profile {choice.profile} (estimates on this machine: {estimates})"
               + ("" if choice.fits else f"; none fits, so {choice.profile} runs and stops at the budget "
                  "(rerun the same command to go on)"))
    chosen = candidates[choice.profile]
    typer.echo(dry_run_text(chosen, with_estimate=False))
    typer.echo("departures from the paper's protocol:")
    for line in departures(chosen.config, chosen.device.type):
        typer.echo(f"  - {line}")
    if dry_run:
        return
    _run(chosen.config, chosen.run_dir, False, started + seconds, choice.record(text))
