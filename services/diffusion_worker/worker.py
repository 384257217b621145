"""Deployable entry point of the diffusion worker: ``python -m services.diffusion_worker.worker``.

The worker itself (a non-forking RQ worker, the pipeline loaded once, the job
function) lives in the library (``oodsynth.worker``, ``oodsynth.decode_job``);
this module only parses the command line, the same options as ``oodsynth worker``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from oodsynth.worker import run_worker


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.diffusion_worker.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--queue", action="append", dest="queues", help="queue name (repeatable); default from settings")
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs (process recycling)")
    parser.add_argument("--no-scheduler", action="store_true", help="do not run RQ's scheduler in this worker")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.max_jobs is not None and args.max_jobs < 1:
        parser.error("--max-jobs: must be >= 1")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run_worker(args.queues, burst=args.burst, max_jobs=args.max_jobs, with_scheduler=not args.no_scheduler,
               logging_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
