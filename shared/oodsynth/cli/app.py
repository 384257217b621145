"""The one typer application; command modules register themselves on it."""

import typer

app = typer.Typer(
    name="oodsynth",
    help="Imagine outliers for OOD detection: fit class densities, sample low-density "
    "vectors, decode them with Stable Diffusion, train and evaluate OOD detectors.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
