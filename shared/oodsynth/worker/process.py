"""The GPU worker process: a non-forking RQ worker with the pipeline loaded once.

RQ's default worker forks a child per job; CUDA cannot be used in a forked
child, and reloading SD per job would cost more than decoding. So this is an
``rq.SimpleWorker`` (jobs run in this process; ``oodsynth.worker.allowlist`` refuses any job but the job function) that loads the pipeline (into
``oodsynth.worker.decode_job.DECODERS``) before it takes its first job. ``max_jobs``
lets a supervisor recycle the process (fresh memory) after N jobs. Jobs travel
as JSON, never pickle. Run it as ``oodsynth worker``.

``oodsynth worker --gpus all|0,1,...`` (or ``--processes N`` on CPU) starts
one such process per device on the same queues (``run_worker_processes``):
RQ hands each job to one of them, and the store keeps every image once.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from rq.serializers import JSONSerializer

from ..config import get_settings
from ..errors import InputError
from ..queue.enqueue import recover_abandoned_jobs
from ..queue.job_hash import CheckedJob
from ..state.redis_conn import get_redis
from .allowlist import AllowlistWorker, GuardedQueue
from .decode_job import DECODERS
from .scheduler_locks import MAINTENANCE_INTERVAL_S, WORKER_TTL_S, release_dead_scheduler_locks

log = logging.getLogger(__name__)


def build_worker(queues: Sequence[str] | None = None, *, preload: bool = True) -> AllowlistWorker:
    """A non-forking worker with JSONSerializer on ``queues`` (default: settings.queue_name) that runs only the job function."""
    settings = get_settings()
    connection = get_redis()
    names = list(queues) if queues else [settings.queue_name]
    if preload:
        decoder = DECODERS.get(settings)
        log.info("pipeline %s loaded on %s (%s)", decoder.model, decoder.device, decoder.dtype)
    rq_queues = [
        GuardedQueue(name, connection=connection, serializer=JSONSerializer, job_class=CheckedJob) for name in names
    ]
    return AllowlistWorker(
        rq_queues,
        connection=connection,
        serializer=JSONSerializer,
        queue_class=GuardedQueue,
        job_class=CheckedJob,
        worker_ttl=WORKER_TTL_S,  # its dequeue wakes every 15 s, so maintenance runs that often (scheduler_locks)
        maintenance_interval=MAINTENANCE_INTERVAL_S,
    )


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
    if with_scheduler:  # a killed worker's scheduler lock: released now, so this worker's scheduler starts at once
        release_dead_scheduler_locks(connection, worker.queue_names())
    return worker.work(burst=burst, max_jobs=max_jobs, with_scheduler=with_scheduler, logging_level=logging_level)


def worker_alive_here(connection=None) -> bool:
    """True when a worker of this host is registered in Redis and not dead: the container health check
    (``python -c "from oodsynth.worker.process import health_check; health_check()"``)."""
    import socket

    from rq import Worker

    connection = connection if connection is not None else get_redis()
    here = socket.gethostname()
    return any(w.hostname == here and w.death_date is None for w in Worker.all(connection=connection))


def health_check() -> None:
    """Exit 0 when ``worker_alive_here``, 1 otherwise (a container health check's contract)."""
    try:
        alive = worker_alive_here()
    except Exception as exc:  # Redis down or refusing: unhealthy, with the reason on stderr
        print(f"unhealthy: {type(exc).__name__}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(0 if alive else 1)


# -- one worker process per device ---------------------------------------------------------------

CHILD_COMMAND = (sys.executable, "-c", "from oodsynth.cli import main; main()", "worker")


def gpu_assignments(spec: str, device_count: int, inherited: str | None = None) -> list[str]:
    """``--gpus all|0,1,...`` -> the ``CUDA_VISIBLE_DEVICES`` value of each worker process, one device each.

    Ids count the devices this process sees; when it already runs under
    ``CUDA_VISIBLE_DEVICES`` (``inherited``), they index that list, and each
    child gets the entry they name (so ``CUDA_VISIBLE_DEVICES=2,3 ... --gpus 1``
    works on physical device 3).
    """
    if device_count < 1:
        raise InputError(
            "gpus",
            "needs CUDA, but torch sees no CUDA device here; leave --gpus out (one CPU worker) or use --processes N",
        )
    visible = (
        [d.strip() for d in inherited.split(",") if d.strip()] if inherited else [str(i) for i in range(device_count)]
    )
    visible = visible[:device_count]
    text = spec.strip().lower()
    if text == "all":
        return visible
    try:
        ids = [int(part) for part in text.split(",")]
    except ValueError:
        raise InputError("gpus", f"expected 'all' or comma-separated device ids such as 0,1; got {spec!r}") from None
    bad = [i for i in ids if not 0 <= i < len(visible)]
    if bad:
        raise InputError(
            "gpus", f"no CUDA device {bad[0]}: this machine has {len(visible)} (ids 0..{len(visible) - 1})"
        )
    if len(set(ids)) != len(ids):
        raise InputError("gpus", f"device ids repeat in {spec!r}: one worker per device")
    return [visible[i] for i in ids]


def run_worker_processes(
    child_args: Sequence[str], devices: Sequence[str | None], *, recycle: bool = False, poll_s: float = 0.5
) -> int:
    """Start ``oodsynth worker <child_args>`` once per entry of ``devices``; the worst exit code when they end.

    Each child is a fresh interpreter (spawned, never forked: CUDA and the
    loaded pipeline must not be shared) and a non-forking worker on the same
    queues; a device string becomes its ``CUDA_VISIBLE_DEVICES`` (None: the
    environment as is, e.g. CPU workers). SIGTERM/SIGINT to this process are
    passed on, so every child finishes its current job first (RQ's warm
    shutdown). With ``recycle`` (``--max-jobs`` without ``--burst``) a child
    that exits cleanly is started again on its device, so recycling one
    process never idles a GPU. A child that fails stops the others and ends
    the launcher with its code, for the supervisor (systemd, compose
    ``restart:``) to restart the whole set; its exit code is the launcher's.
    """

    def start(device: str | None) -> subprocess.Popen:
        env = dict(os.environ)
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        child = subprocess.Popen([*CHILD_COMMAND, *child_args], env=env)
        log.info("worker process %d started%s", child.pid, "" if device is None else f" on CUDA device {device}")
        return child

    children = [start(device) for device in devices]
    stopping: list[int] = []

    def stop(signum, _frame=None):
        stopping.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    codes: dict[int, int] = {}
    failure: list[int] = []  # the code of the first child that failed (the others are then stopped by us)
    try:
        while len(codes) < len(children):
            for i, child in enumerate(children):
                code = child.poll()
                if code is None or i in codes:
                    continue
                if code == 0 and recycle and not stopping:
                    children[i] = start(devices[i])
                    continue
                codes[i] = code
                if code:
                    log.warning("worker process %d exited with %d", child.pid, code)
                    if not stopping:
                        failure.append(code)
                        stop(signal.SIGTERM)
            time.sleep(poll_s)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    worst = failure or [max(codes.values(), key=abs)]
    return worst[0] if worst[0] >= 0 else 128 - worst[0]  # killed by signal N: 128 + N, as a shell says
