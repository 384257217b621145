"""The one typer application; command modules register themselves on it.

Every library error (``oodsynth.errors``) that escapes a command is printed
here as one line ``error: <field>: <message>`` and exits with the error's
code (2 for bad input, missing or conflicting names; 1 when a service is
unavailable), so commands never translate errors themselves.
"""

from typing import TYPE_CHECKING

import typer
from typer.core import TyperGroup

from ..errors import OodsynthError

if TYPE_CHECKING:
    from typer._click import Context  # typer vendors click; TyperGroup.invoke takes that click's Context


def fail_line(field: str | None, message: str) -> str:
    return f"error: {field}: {message}" if field else f"error: {message}"


class _ErrorsAsOneLine(TyperGroup):
    def invoke(self, ctx: "Context"):
        try:
            return super().invoke(ctx)
        except OodsynthError as exc:
            typer.echo(fail_line(exc.field, exc.message), err=True)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    name="oodsynth",
    cls=_ErrorsAsOneLine,
    help="Imagine outliers for OOD detection: fit class densities, sample low-density "
    "vectors, decode them with Stable Diffusion, train and evaluate OOD detectors.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"oodsynth {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
    api_key: str = typer.Option(
        None,
        "--api-key",
        envvar="OODSYNTH_API_KEY",
        show_default=False,
        help="API key for commands run with --api (sent as 'Authorization: Bearer'); prefer the environment variable.",
    ),
) -> None:
    """Imagine outliers for OOD detection."""
    if api_key:  # the client reads it from settings, like every other OODSYNTH_* value
        import os

        from ..config import get_settings

        os.environ["OODSYNTH_API_KEY"] = api_key
        get_settings.cache_clear()
