"""Commands of the method: datasets, importance, score, run."""

from __future__ import annotations

from pathlib import Path

import typer

from .cli import DATA_DIR, LABEL_COLUMN, TEXT_COLUMN, app


@app.command("datasets")
def datasets_command(
    spec: str = typer.Argument("G1,G2,G3", help="Datasets or groups, comma-separated."),
    data_dir: Path = DATA_DIR,
    text_column: str = TEXT_COLUMN,
    label_column: str = LABEL_COLUMN,
) -> None:
    """List datasets with their size and classes (checks that they load)."""
    from .data import expand_datasets, load_dataset

    for name in expand_datasets(spec):
        ds = load_dataset(name, text_column=text_column, label_column=label_column, data_dir=data_dir)
        counts = ", ".join(f"{c}={n}" for c, n in ds.class_counts().items())
        typer.echo(f"{ds.name:18s} {len(ds):6d}  {counts}")
