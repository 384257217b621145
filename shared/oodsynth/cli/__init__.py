"""CLI entry point ``oodsynth``: each module below adds one family of commands.

Installed services add theirs (``oodsynth serve``) through the
``oodsynth.commands`` entry point group, so the library never names them.
"""

from importlib.metadata import entry_points

from . import (  # noqa: F401  (register commands)
    core,
    decoder,  # noqa: F401  (train-decoder)
    export,  # noqa: F401  (export)
    gallery,  # noqa: F401  (gallery)
    generation,
    plots,  # noqa: F401  (plot tsne, plot grid)
    training,
)
from .app import app

for _command in entry_points(group="oodsynth.commands"):
    app.command(_command.name)(_command.load())


def main() -> None:
    app()
