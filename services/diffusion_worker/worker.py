"""The GPU worker process: a non-forking RQ worker with the pipeline loaded once.

RQ's default worker forks a child per job; CUDA cannot be used in a forked
child, and reloading SD per job would cost more than decoding. So this is an
``rq.SimpleWorker`` (jobs run in this process) that loads the pipeline before
it takes its first job. ``max_jobs`` lets a supervisor recycle the process
(fresh memory) after N jobs. Jobs travel as JSON, never pickle.

Run it as ``oodsynth worker`` or ``python -m services.diffusion_worker.worker``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from oodsynth.config import get_settings
from oodsynth.queue import recover_abandoned_jobs
from oodsynth.redis_conn import get_redis

from .tasks import get_decoder

log = logging.getLogger(__name__)


def build_worker(queues: Sequence[str] | None = None, *, preload: bool = True) -> SimpleWorker:
    """A SimpleWorker with JSONSerializer on ``queues`` (default: settings.queue_name)."""
    settings = get_settings()
    connection = get_redis()
    names = list(queues) if queues else [settings.queue_name]
    if preload:
        decoder = get_decoder(settings.model)
        log.info("pipeline %s loaded on %s (%s)", decoder.model, decoder.device, decoder.dtype)
    rq_queues = [Queue(name, connection=connection, serializer=JSONSerializer) for name in names]
    return SimpleWorker(rq_queues, connection=connection, serializer=JSONSerializer)


def run_worker(
    queues: Sequence[str] | None = None,
    burst: bool = False,
    max_jobs: int | None = None,
    with_scheduler: bool = True,
    logging_level: str = "INFO",
) -> bool:
    """Load the pipeline, then work the queues; True when any job was processed.

    ``with_scheduler`` runs RQ's scheduler in this worker too, which moves jobs
    waiting out a retry interval back onto their queue.
    """
    settings = get_settings()
    connection = get_redis()
    # Jobs left 'started' by a killed worker are retried now, not after timeout + 60 s.
    for name in queues or [settings.queue_name]:
        recovered = recover_abandoned_jobs(connection, name)
        if recovered:
            log.warning("requeued %d abandoned jobs from %s: %s", len(recovered), name, ", ".join(recovered))
    worker = build_worker(queues)
    return worker.work(
        burst=burst, max_jobs=max_jobs, with_scheduler=with_scheduler, logging_level=logging_level
    )


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
    run_worker(args.queues, burst=args.burst, max_jobs=args.max_jobs, with_scheduler=not args.no_scheduler, logging_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
