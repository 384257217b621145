"""CLI command ``train-decoder``: the offline profile's trained decoder, as a pipeline folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from ..errors import InputError
from .app import app


@app.command("train-decoder")
def train_decoder_command(
    out: Path = typer.Argument(None, help="Copy the trained pipeline folder here (default: only the cache)."),
    profile: str = typer.Option("animals", help="Offline data profile: animals or digits."),
    unet_steps: int = typer.Option(None, min=1, help="UNet training steps (default: the profile's)."),
    seed: int = typer.Option(0, help="Seed of the text encoder's rows and of every training stage."),
    threads: int = typer.Option(None, min=1, help="torch CPU threads (1 is faster on a busy machine)."),
    force: bool = typer.Option(False, help="Overwrite OUT when it exists."),
) -> None:
    """Train (or reuse from the cache under OODSYNTH_HOME) the decoder of a profile.

    The folder loads with StableDiffusionPipeline.from_pretrained, so OODSYNTH_MODEL=<folder> makes the
    worker decode with it; it also holds encoder/encoder.pt (the text-aligned encoder), anchors.npy and
    decoder.json (settings, class names, training figures, recommended decode settings).
    """
    import torch

    from ..offline_decoder.assets import ensure_profile_assets
    from ..offline_decoder.training import profile_config

    if out is not None and out.exists() and not force:
        raise InputError("out", f"{out} exists; pass --force to overwrite it")
    overrides = {"seed": seed} | ({"unet_steps": unet_steps} if unet_steps is not None else {})
    config = profile_config(profile, holdout=None, **overrides)  # the profile's default split
    if threads is not None:
        torch.set_num_threads(threads)
    assets = ensure_profile_assets(profile, config=config, echo=lambda line: typer.echo(line, err=True))
    folder = assets.decoder_dir
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
        folder = Path(shutil.copytree(assets.decoder_dir, out))
    record = assets.record
    typer.echo(f"decoder ({profile}, {len(assets.class_names)} classes: {', '.join(assets.class_names)}) -> {folder}")
    if "total_s" in record:
        typer.echo(
            f"trained in {record['total_s']:.0f} s; encoder train accuracy {record['encoder_train_accuracy']:.3f}"
        )
    settings = assets.decode_settings()
    typer.echo(
        f"decode with: OODSYNTH_MODEL={folder}  steps={settings['steps']} guidance_scale="
        f"{settings['guidance_scale']} height=width={settings['height']} scheduler={settings['scheduler']}"
    )
