"""An RQ worker that runs only the project's job function, and that no bytes in Redis can stop.

JSON payloads stop pickle, but RQ still imports and calls whatever a job
names: its ``func`` (``os.system`` works), an ``instance`` to call it on, its
success/failure/stopped callbacks, and it POSTs to the job's webhooks. Anyone
who can write to Redis could use any of these to run code on (or make
requests from) a GPU host. ``AllowlistWorker`` checks every job before RQ
resolves any of those names: a job that is not a plain call of
``oodsynth.queue.enqueue.JOB_FUNCTION`` is failed at once, without retries,
callbacks or webhooks, with the reason as its error text, and nothing of it
is imported or run.

Whoever writes to Redis can also write bytes that are no job at all: an id
that is not UTF-8, a job hash whose fields do not parse, a payload that does
not deserialise. RQ raises on each of those inside its work loop, and the
worker quits ("unhandled exception"), leaving the job 'started'. Here every
such entry is refused instead (``GuardedQueue`` at dequeue, ``AllowlistWorker``
at execution): taken off the queue, its reason logged and kept in the capped
Redis list ``REFUSED_KEY`` (``refused_jobs``), and the worker goes on with the
next job. The refusal path never deserialises the payload a second time.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable

import redis
from rq import SimpleWorker
from rq.intermediate_queue import IntermediateQueue
from rq.job import JOB_ID_PATTERN, Job
from rq.queue import Queue
from rq.utils import get_version
from rq.worker import WorkerStatus

from ..queue.enqueue import JOB_FUNCTION, REFUSED_KEPT, REFUSED_KEY
from ..queue.payloads import MAX_JOB_BYTES
from .scheduler_locks import release_dead_scheduler_locks

log = logging.getLogger(__name__)

ALLOWED_FUNCTIONS = frozenset({JOB_FUNCTION})


class RefusedJobError(Exception):
    """A job that names something other than the allowed job function, or is no readable job."""


def _shown(raw: bytes | str) -> str:
    """A job id as it may be logged: printable, at most 100 characters."""
    text = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:200])
    return text if len(text) <= 100 else text[:97] + "..."


def record_refusal(connection: redis.Redis, job_id: bytes | str, queue: str, reason: str) -> None:
    """Log the refusal and keep it in ``REFUSED_KEY`` (the newest ``REFUSED_KEPT``); never raises."""
    shown = _shown(job_id)
    log.warning("job %s on %s %s", shown, queue, reason)
    entry = json.dumps({"id": shown, "queue": queue, "reason": reason[:500], "at": time.time()})
    try:
        with connection.pipeline() as pipe:
            pipe.lpush(REFUSED_KEY, entry)
            pipe.ltrim(REFUSED_KEY, 0, REFUSED_KEPT - 1)
            pipe.execute()
    except redis.exceptions.RedisError:
        log.exception("could not record the refusal of job %s", shown)


def refusal_reason(job: Job) -> str | None:
    """Why ``job`` must not run, or None when it is a plain call of an allowed function."""
    problems = getattr(job, "hash_problems", None)  # CheckedJob: fields RQ must not act on (queue.job_hash)
    if problems:
        return f"refused: bad job fields: {'; '.join(problems)[:400]}"
    try:
        size = len(job.data)
        if size > MAX_JOB_BYTES:
            return f"refused: job payload of {size} bytes is over the cap of {MAX_JOB_BYTES}"
        func_name = job.func_name  # deserialises the JSON payload only; nothing is imported
        instance = job.instance
    except Exception as exc:  # an undecodable payload is refused too
        return f"refused: unreadable job payload ({type(exc).__name__})"
    if func_name not in ALLOWED_FUNCTIONS:
        return f"refused: job function {_shown(str(func_name))!r} is not allowed; this worker runs only {JOB_FUNCTION}"
    if instance is not None:
        return "refused: jobs must not carry an instance to call the function on"
    callbacks = [
        n
        for n in ("_success_callback_name", "_failure_callback_name", "_stopped_callback_name")
        if getattr(job, n, None)
    ]
    if callbacks:
        return f"refused: jobs must not carry callbacks ({', '.join(c.strip('_') for c in callbacks)})"
    if job.webhooks:
        return "refused: jobs must not carry webhooks"
    return None


class GuardedQueue(Queue):
    """A queue whose dequeue refuses entries that are no readable job instead of raising into the work loop."""

    @classmethod
    def dequeue_any(
        cls,
        queues: Iterable[Queue],
        timeout: int | None,
        connection: redis.Redis,
        job_class: type[Job] | None = None,
        serializer=None,
        death_penalty_class=None,
    ) -> tuple[Job, Queue] | None:
        """RQ's ``dequeue_any`` (LMOVE into the intermediate queue, or LPOP), with each popped entry judged."""
        queue_keys = [queue.key for queue in queues]
        while True:
            if len(queue_keys) == 1 and get_version(connection) >= (6, 2, 0):
                result = cls.lmove(connection, queue_keys[0], timeout)
            else:
                result = cls.lpop(queue_keys, timeout, connection=connection)
            if result is None:
                return None
            raw_key, raw_id = result
            queue_key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key  # one of our own keys
            queue_name = queue_key.removeprefix(cls.redis_queue_namespace_prefix)
            try:
                job_id = raw_id.decode("utf-8") if isinstance(raw_id, bytes) else str(raw_id)
                if not JOB_ID_PATTERN.fullmatch(job_id):
                    raise ValueError("not a job id")
            except ValueError:
                cls._drop(connection, queue_key, raw_id)
                record_refusal(connection, raw_id, queue_name, "refused: the queue entry is not a job id")
                continue
            try:
                fetched = cls._fetch_dequeued_job(
                    connection,
                    queue_key,
                    job_id,
                    job_class=job_class,
                    serializer=serializer,
                    death_penalty_class=death_penalty_class,
                )
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                raise  # the worker's own loop waits for Redis
            except Exception as exc:  # a job hash whose fields RQ cannot parse
                cls._drop(connection, queue_key, raw_id)
                record_refusal(connection, job_id, queue_name, f"refused: unreadable job ({type(exc).__name__})")
                continue
            if fetched is None:  # the job hash is gone (expired or deleted): nothing to run
                cls._drop(connection, queue_key, raw_id)
                continue
            job, queue = fetched
            if job.origin != queue.name:  # RQ clears the intermediate entry of job.origin's queue: it must be ours
                problem = f"origin: {_shown(job.origin or '')!r} is not the queue the job was taken from"
                setattr(job, "hash_problems", [*getattr(job, "hash_problems", []), problem])  # noqa: B010 (a plain Job too)
                job.origin = queue.name
            return fetched

    @staticmethod
    def _drop(connection: redis.Redis, queue_key: str, raw_id: bytes | str) -> None:
        """Take a refused entry out of the intermediate queue LMOVE put it in (LPOP left none)."""
        connection.lrem(IntermediateQueue.get_intermediate_queue_key(queue_key), 1, raw_id)  # type: ignore[arg-type]  # redis-py types the value as str; LREM takes the raw bytes popped (a non-UTF-8 id too)


class AllowlistWorker(SimpleWorker):
    """A non-forking RQ worker that fails, unrun, every job ``refusal_reason`` objects to.

    Build it with ``queue_class=GuardedQueue`` (``oodsynth.worker.process.build_worker`` does).
    """

    PUBSUB_SLEEP_S = 1.0

    def run_maintenance_tasks(self) -> None:
        """RQ's maintenance (clean registries, start the scheduler if this worker can take its lock), after
        releasing the locks of dead schedulers: a killed worker's lock must not hold retries for minutes."""
        try:
            release_dead_scheduler_locks(self.connection, self.queue_names())
        except redis.exceptions.RedisError:
            log.exception("could not check the scheduler locks")
        super().run_maintenance_tasks()

    def subscribe(self) -> None:
        """RQ's subscription to its command channel, its thread waking each second instead of each minute: a
        worker that stops before the thread has seen its subscription otherwise waits out the whole 60 s
        (redis-py's ``get_message`` waits for the subscription first; the thread's join has no timeout)."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]  # RQ declares it None
            sleep_time=self.PUBSUB_SLEEP_S, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def execute_job(self, job: Job, queue: Queue):
        reason = refusal_reason(job)
        if reason is None:
            return super().execute_job(job, queue)
        record_refusal(self.connection, job.id, queue.name, reason)
        try:
            self._fail_unrun(job, queue, reason)
        except Exception:  # odd field values RQ's bookkeeping trips on: drop the entry, keep working
            log.exception("job %s: could not record its failure; dropped from the queue", _shown(job.id))
            try:
                GuardedQueue._drop(self.connection, queue.key, job.id)
                queue.started_job_registry.remove_executions(job)
            except Exception:
                log.exception("job %s: could not drop it from the registries", _shown(job.id))
        self.set_state(WorkerStatus.IDLE)

    def _fail_unrun(self, job: Job, queue: Queue, reason: str) -> None:
        """RQ's failure bookkeeping for a job that never ran: failed registry, no retries, callbacks or webhooks."""
        # Strip everything RQ would resolve or call on the failure path before it looks, and give the
        # payload fields placeholders so nothing deserialises it again (the raw bytes stay as they are).
        job._success_callback_name = job._failure_callback_name = job._stopped_callback_name = None
        job.webhooks = []
        job.retries_left = 0
        job.origin = queue.name  # the queue it came from: a junk origin would leave it in the intermediate queue
        job._func_name, job._instance, job._args, job._kwargs = "<refused>", None, (), {}
        execution = self.prepare_execution(job)
        self.prepare_job_execution(job, remove_from_intermediate_queue=len(self.queues) == 1)
        self.handle_execution_ended(job, queue, self.job_monitoring_interval)
        self.handle_job_failure(
            job,
            queue,
            started_job_registry=queue.started_job_registry,
            exc_string=f"{RefusedJobError.__name__}: {reason}",
            execution=execution,
        )
