"""Commands that turn a run into something people use: report, verify, export, finetune, predict.

Plain functions; `app.py` registers them, so this module never sees the app."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ..errors import HeadpruneError
from .options import DEVICE, LABEL_COLUMN, MODEL, TEXT_COLUMN

# Options of these commands (module-level, as typer re-uses them; see options.py).
RUN_DIR_ARG = typer.Argument(..., help="Run directory holding summary.json.")
EXPORT_RUN_DIR = typer.Argument(
    None,
    help="Run directory holding summary.json (with --model), or a pruned-model or classifier directory to convert "
    "(with --format onnx).",
)
EXPORT_OUT = typer.Option(..., "--out", help="Directory to write the pruned model to.")
CLASSIFIER_OUT = typer.Option(..., "--out", help="Directory to write the classifier to.")
CLASSIFIER_DIR = typer.Option(
    ..., "--model", help="Classifier directory written by `headprune finetune`, or its ONNX export (onnxruntime)."
)


def report_command(
    run_dir: Path = RUN_DIR_ARG,
) -> None:
    """Write RUN_DIR/report/: report.html (self-contained), tables.md and figures/*.png."""
    from ..report import write_report

    path = write_report(run_dir)
    typer.echo(f"report: {path}")
    typer.echo(f"tables: {path.parent / 'tables.md'}")


def verify_command(
    run_dir: Path = RUN_DIR_ARG,
) -> None:
    """Recompute every number of RUN_DIR/summary.json from RUN_DIR/store.sqlite; exit 1 if any differs."""
    from ..verify import verify_run

    result = verify_run(run_dir)
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    if result.problems:
        for problem in result.problems[:20]:
            typer.echo(f"mismatch: {problem}", err=True)
        more = len(result.problems) - 20
        typer.echo(f"{len(result.problems)} of {result.checked} numbers of summary.json do not match the store"
                   + (f" ({more} more not shown)" if more > 0 else ""), err=True)
        raise typer.Exit(1)
    typer.echo(f"verified: {result.checked} numbers of {run_dir / 'summary.json'} recomputed from the store; all match")


def replay_command(
    run_dir: Path = RUN_DIR_ARG,
    repeats: int = typer.Option(200, "--repeats", help="Races replayed per search, each with the seed order permuted."),
    seed: int = typer.Option(0, "--seed", help="Seed of the permutations."),
    confidence: float = typer.Option(None, "--confidence", help="Racing confidence (default: the run's "
                                     "step2.racing_confidence)."),
    first_test: int = typer.Option(None, "--first-test", help="Seeds before the first test (default: the run's "
                                   "step2.racing_first_test)."),
    walk_test: str = typer.Option(None, "--walk-test", help="How H2/H3's steps are decided: skeptical-walk, "
                                  "skeptical, predictive-walk, predictive or t-test (default: the run's "
                                  "step2.racing_walk_test)."),
    low_fidelity: Path = typer.Option(None, "--low-fidelity", help="A run of the same H1 grid scored at a lower "
                                      "fidelity (e.g. [scoring] epochs = 0): correlations, and races screened at it."),
    screen_cost: float = typer.Option(0.2, "--screen-cost", min=0.0, help="Cost of one low-fidelity evaluation "
                                      "in full ones."),
) -> None:
    """Replay racing on a run that scored the complete grid (racing off): RUN_DIR/replay.json with how
    often a race chooses the grid's model and what fraction of the evaluations it needs."""
    from dataclasses import replace

    from ..config import recorded_config
    from ..constraints import check
    from ..racing import RacingSettings
    from ..studies.replay import REPLAY_FILE, replay_run
    from ..summary import load_summary

    if walk_test is not None:
        check("--walk-test", walk_test, RacingSettings.constraints["walk_test"])
    settings = None
    overrides = {k: v for k, v in (("confidence", confidence), ("first_test", first_test), ("walk_test", walk_test))
                 if v is not None}
    if overrides:  # the run's racing settings with these replaced
        path = run_dir / "summary.json"
        recorded = RacingSettings()  # without a summary, replay_run says what is missing
        if path.is_file():
            summary = load_summary(path)
            recorded = recorded_config(summary.need(summary.config, "config"), str(path)).step2.racing_settings()
        settings = replace(recorded, **overrides)
    out = replay_run(run_dir, repeats=repeats, seed=seed, settings=settings,
                     progress=lambda line: typer.echo(line, err=True), low_fidelity=low_fidelity,
                     screen_cost=screen_cost)
    for key, entry in out["searches"].items():
        line = (f"{key}: agreement {_fraction(entry['agreement'])}, "
                f"evaluations {_fraction(entry['evaluation_fraction'])} of the grid")
        if "steps" in entry:
            steps = entry["steps"]
            line += (f"; steps: {steps['decisions']} decisions, agreement {_fraction(steps['agreement'])}, "
                     f"seeds {_fraction(steps['seed_fraction'])}")
        if "noise_ceiling" in entry:
            ceiling = entry["noise_ceiling"]
            fewest = min(ceiling["subsets"], key=int, default=None)
            line += (f"; without racing, the grid's rule on {fewest} random seeds agrees "
                     f"{_fraction(ceiling['subsets'][fewest])}," if fewest is not None else ";") + \
                f" on resampled seeds {_fraction(ceiling['bootstrap'])}"
        typer.echo(line)
    for key, entry in out.get("screened", {}).items():
        rho = [v["spearman"] for v in out["fidelity"][key].values() if v["spearman"] is not None]
        typer.echo(f"{key} screened at the low fidelity: agreement {_fraction(entry['agreement'])}, cost "
                   f"{_fraction(entry['cost_fraction'])} of the grid (Spearman of the means per dataset: "
                   + ", ".join(f"{r:.2f}" for r in rho) + ")")
    typer.echo(f"replay: {run_dir / REPLAY_FILE}")


def _fraction(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def export_command(
    run_dir: Path = EXPORT_RUN_DIR,
    model: str = typer.Option(None, "--model", help="Chosen model of the run to export, e.g. MOIH1."),
    base: str = typer.Option(
        None, "--base", help="Base model (hub id, directory, 'minilm'); with RUN_DIR it replaces the run's model."
    ),
    prune: str = typer.Option(None, "--prune", help="Heads to prune from --base, e.g. '0:1,2;3:*' (0-based)."),
    out: Path = EXPORT_OUT,
    fmt: str = typer.Option(
        "pytorch", "--format", help="pytorch (safetensors, for headprune) or onnx (model.onnx, for onnxruntime)."
    ),
) -> None:
    """Save a pruned model (weights, tokenizer, model card): a run's chosen model, explicit heads, or a
    pruned-model/classifier directory converted to ONNX.

    headprune export RUN_DIR --model MOIH1 --out DIR [--format onnx]
    headprune export --base minilm --prune "0:1,2;3:*" --out DIR [--format onnx]
    headprune export MODEL_OR_CLASSIFIER_DIR --format onnx --out DIR"""
    from ..export import export_directory, export_heads, export_model

    if run_dir is not None:
        if prune is not None:
            raise HeadpruneError("give either RUN_DIR --model NAME or --base MODEL --prune HEADS, not both")
        if model is None and not (run_dir / "summary.json").is_file():
            if base is not None:
                raise HeadpruneError(f"--base: {run_dir} is not a run directory; its model is its own base")
            path = export_directory(run_dir, out, fmt=fmt)
        elif model is None:
            raise HeadpruneError(f"which model of {run_dir}? pass --model (e.g. --model MOIH1)")
        else:
            path = export_model(run_dir, model, out, base_model=base, fmt=fmt)
    else:
        if model is not None:
            raise HeadpruneError("--model names a chosen model of a run: give the run directory too")
        if base is None or prune is None:
            raise HeadpruneError("give RUN_DIR --model NAME, or --base MODEL --prune HEADS (e.g. '0:1,2;3:*')")
        path = export_heads(base, prune, out, fmt=fmt)
    typer.echo(f"saved: {path} (model card: {path / 'README.md'})")


def finetune_command(
    model: str = MODEL,
    train: str = typer.Option(..., "--train", help="Training data: CSV/TSV/JSONL file (or a bundled dataset name)."),
    eval_file: str = typer.Option(
        None, "--eval", help="Data to score F1-macro on; default: a stratified 20% held out of --train."
    ),
    out: Path = CLASSIFIER_OUT,
    text_column: str = TEXT_COLUMN,
    label_column: str = LABEL_COLUMN,
    epochs: int = typer.Option(4, "--epochs", min=1),
    lr: float = typer.Option(2e-5, "--lr", min=0.0),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    seed: int = typer.Option(1, "--seed"),
    device: str = DEVICE,
) -> None:
    """Finetune a classifier on a (pruned) encoder; print its F1-macro and training time."""
    from ..classify import finetune
    from ..data import load_dataset

    train_set = load_dataset(train, text_column=text_column, label_column=label_column)
    eval_set = None
    if eval_file is not None:
        eval_set = load_dataset(eval_file, text_column=text_column, label_column=label_column)
    result = finetune(
        model, train_set, eval_set, out, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device
    )
    typer.echo(f"F1-macro: {result['f1_macro']:.4f} ({result['eval']})")
    typer.echo(
        f"time: {result['seconds']:.1f} s training ({result['n_train']} rows, {epochs} epochs, {result['device']})"
    )
    typer.echo(f"saved: {out}")


def predict_command(
    source: str = typer.Argument(..., help="CSV/TSV/JSONL file, a text file (one text per line), or - for stdin."),
    model: Path = CLASSIFIER_DIR,
    text_column: str = TEXT_COLUMN,
    fmt: str = typer.Option("auto", "--format", help="auto, csv, tsv, jsonl or lines."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    device: str = DEVICE,
) -> None:
    """Label texts; write CSV to standard output: text,label,p_<class>..."""
    from ..classify import load_classifier, predict, read_texts, write_predictions
    from ..devices import resolve_device

    classifier = load_classifier(model, device=str(resolve_device(device)))
    texts = read_texts(source, text_column=text_column, fmt=fmt)
    labels, probabilities = predict(classifier, texts, batch_size=batch_size)
    write_predictions(sys.stdout, texts, labels, probabilities, classifier.labels)
