"""Deployable entry point of the diffusion worker: ``python -m services.diffusion_worker.worker [OPTIONS]``.

The worker itself (a non-forking RQ worker, the pipeline loaded once, the job
function, one process per GPU with ``--gpus``) lives in the library
(``oodsynth.worker.process``, ``oodsynth.worker.decode_job``); this module runs the
``oodsynth worker`` command with the same options, so the two never drift apart.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from oodsynth.cli import app

    args = list(sys.argv[1:] if argv is None else argv)
    app(["worker", *args], prog_name="oodsynth")  # exits with the command's code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
