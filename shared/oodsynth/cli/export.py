"""CLI command ``export``: a stored dataset as a Hugging Face imagefolder, WebDataset shards or an OpenOOD list."""

from __future__ import annotations

import typer

from .app import app

# The formats and their choices, spelled here so that --help needs no import of the exporters (datasets, pyarrow).
FORMATS = {
    "imagefolder": "Hugging Face imagefolder (datasets, torchvision)",
    "webdataset": "WebDataset tar shards",
    "openood": "OpenOOD image list",
}
OPENOOD_LABELS = ("ood", "class")


@app.command("export")
def export_cmd(
    dataset: str = typer.Argument(..., help="Store dataset to export."),
    out: str = typer.Argument(..., help="Folder or s3://bucket/prefix to write (must be empty or absent)."),
    format: str = typer.Option(
        "imagefolder", "--format", help="; ".join(f"{k}: {v}" for k, v in FORMATS.items()) + "."
    ),
    store: str | None = typer.Option(
        None, help="Result store folder or s3://bucket/prefix (default: settings OODSYNTH_STORE)."
    ),
    verified_only: bool = typer.Option(
        False, "--verified-only", help="Only verified images at or below the default ID percentile (10)."
    ),
    max_id_percentile: float | None = typer.Option(
        None, help="Only verified images whose re-encoded feature sits at or below this ID percentile."
    ),
    classes: list[str] | None = typer.Option(None, "--classes", help="Class names to export (repeatable)."),
    shard_size: int | None = typer.Option(None, help="webdataset: images per tar shard (default 1000)."),
    openood_label: str = typer.Option(
        "ood",
        help="openood: the label of each line, ood (-1: OpenOOD's uniform soft label for outliers) or class "
        "(the generator's class index).",
    ),
    id_dataset: str | None = typer.Option(
        None,
        help="For the dataset card: the ID dataset the fit came from (digits, animals, cifar10, cifar100 "
        "fill in the license).",
    ),
    encoder: str | None = typer.Option(None, help="For the dataset card: the encoder the features came from."),
    license: str | None = typer.Option(
        None, help="For the dataset card: the license, a hub id (mit, cc-by-4.0, ...) or a line (then 'other')."
    ),
) -> None:
    """Export a stored dataset with its manifest and a dataset card the Hugging Face hub reads."""
    from ..service.export import export_dataset

    result = export_dataset(
        dataset,
        out,
        format=format,
        store=store,
        classes=classes,
        verified_only=verified_only,
        max_id_percentile=max_id_percentile,
        shard_size=shard_size,
        openood_label=openood_label,
        id_dataset=id_dataset,
        encoder=encoder,
        license=license,
    )
    typer.echo(
        f"export: {result.n_images} images of {len(result.per_class)} classes as {result.format} "
        f"in {result.out} ({len(result.files)} files)"
    )
