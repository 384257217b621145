"""The GPU worker process: a non-forking RQ worker with the pipeline loaded once.

RQ's default worker forks a child per job; CUDA cannot be used in a forked
child, and reloading SD per job would cost more than decoding. So this is an
``rq.SimpleWorker`` (jobs run in this process; ``oodsynth.safe_worker`` refuses any job but the job function) that loads the pipeline (into
``oodsynth.decode_job.DECODERS``) before it takes its first job. ``max_jobs``
lets a supervisor recycle the process (fresh memory) after N jobs. Jobs travel
as JSON, never pickle. Run it as ``oodsynth worker``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from rq import Queue
from rq.serializers import JSONSerializer

from .config import get_settings
from .decode_job import DECODERS
from .queue import recover_abandoned_jobs
from .redis_conn import get_redis
from .safe_worker import AllowlistWorker

log = logging.getLogger(__name__)


def build_worker(queues: Sequence[str] | None = None, *, preload: bool = True) -> AllowlistWorker:
    """A non-forking worker with JSONSerializer on ``queues`` (default: settings.queue_name) that runs only the job function."""
    settings = get_settings()
    connection = get_redis()
    names = list(queues) if queues else [settings.queue_name]
    if preload:
        decoder = DECODERS.get(settings)
        log.info("pipeline %s loaded on %s (%s)", decoder.model, decoder.device, decoder.dtype)
    rq_queues = [Queue(name, connection=connection, serializer=JSONSerializer) for name in names]
    return AllowlistWorker(rq_queues, connection=connection, serializer=JSONSerializer)


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
    connection = get_redis()
    # Jobs left 'started' by a killed worker are retried now, not after timeout + 60 s.
    for name in queues or [get_settings().queue_name]:
        recovered = recover_abandoned_jobs(connection, name)
        if recovered:
            log.warning("requeued %d abandoned jobs from %s: %s", len(recovered), name, ", ".join(recovered))
    worker = build_worker(queues)
    return worker.work(burst=burst, max_jobs=max_jobs, with_scheduler=with_scheduler, logging_level=logging_level)
