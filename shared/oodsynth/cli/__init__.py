"""CLI entry point ``oodsynth``: each module below adds one family of commands."""

from .app import app
from . import core, generation, training  # noqa: F401  (register commands)


def main() -> None:
    app()
