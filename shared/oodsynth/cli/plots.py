"""CLI commands ``plot tsne`` and ``plot grid``: figures as PNG.

Bad input prints one line ``error: <option>: <message>`` and exits with code 2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from ..config import parse_store_setting
from ..errors import InputError
from .app import app

plot_app = typer.Typer(
    help="Figures as PNG: t-SNE of features/anchors/outliers, image grids from the store.", no_args_is_help=True
)
app.add_typer(plot_app, name="plot")


@plot_app.command("tsne")
def plot_tsne_cmd(
    bank: Path = typer.Option(..., help="Feature bank (.npz)."),
    out: Path = typer.Option(..., "--out", help="PNG to write."),
    sample: Path | None = typer.Option(
        None, help="Outlier vectors: an .npz with vectors and class_index (what `oodsynth sample --out` writes)."
    ),
    max_per_class: int = typer.Option(200, min=1, help="ID features and outliers drawn per class at most."),
    perplexity: float = typer.Option(30.0, min=1.0, help="t-SNE perplexity (below the number of points)."),
    seed: int = typer.Option(0, help="Seed of the subsampling and of t-SNE."),
) -> None:
    """t-SNE of ID features, anchors and sampled outlier vectors in one picture."""
    from ..bank import BankError, load_bank
    from ..plots import plot_tsne

    try:
        fb = load_bank(bank)
    except (BankError, FileNotFoundError) as exc:
        raise InputError("bank", str(exc)) from None
    outliers = None
    if sample is not None:
        try:
            with np.load(sample, allow_pickle=False) as z:
                outliers = (z["vectors"], z["class_index"])
        except (OSError, ValueError, KeyError) as exc:
            raise InputError("sample", f"{sample} is not an .npz with vectors and class_index ({exc})") from None
    try:
        path = plot_tsne(fb, out, outliers, max_per_class=max_per_class, perplexity=perplexity, seed=seed)
    except ValueError as exc:
        raise InputError("sample", str(exc)) from None
    typer.echo(f"t-SNE: {path}")


@plot_app.command("grid")
def plot_grid_cmd(
    dataset: str = typer.Option(..., help="Store dataset name."),
    out: Path = typer.Option(..., "--out", help="PNG to write."),
    store: str | None = typer.Option(
        None, help="Result store folder or s3://bucket/prefix (default: settings OODSYNTH_STORE)."
    ),
    per_class: int = typer.Option(8, min=1, help="Images per class (one row each)."),
    classes: list[str] | None = typer.Option(None, "--classes", help="Class names to show (repeatable)."),
) -> None:
    """Generated images per class from the result store, one row per class."""
    from ..config import get_settings
    from ..plots import plot_grid

    path = plot_grid(
        parse_store_setting(store) if store else get_settings().store,
        dataset,
        out,
        per_class=per_class,
        classes=classes,
    )
    typer.echo(f"grid: {path}")
