"""CLI entry point ``oodsynth``: each module below adds one family of commands.

Installed services add theirs (``oodsynth serve``) through the
``oodsynth.commands`` entry point group, so the library never names them.
"""

from importlib.metadata import entry_points

from .app import app
from . import core, generation, training  # noqa: F401  (register commands)
from . import decoder  # noqa: F401  (train-decoder)

for _command in entry_points(group="oodsynth.commands"):
    app.command(_command.name)(_command.load())


def main() -> None:
    app()
