"""The generation queue: RQ with JSON payloads, job status, queue stats, abandoned-job recovery.

* Payloads are JSON, never pickle: whoever can write to Redis must not be able
  to run code on the GPU workers. They are written by orjson, with each vector
  packed as base64 float32 (``payloads.pack_vector``) and stored without a zlib
  pass (``PayloadSerializer``, ``CompactJob``: a fraction of the CPU of RQ's
  defaults), and read by RQ's ``JSONSerializer`` anywhere.
* The job function (``oodsynth.worker.decode_job.decode_task``) is referenced by
  name, so the API never imports torch.
* A request is split into jobs of ``settings.images_per_job`` images, enqueued
  in one Redis transaction (all or nothing, one round trip), each with a finite timeout and
  ``Retry`` with back-off.
* Failures are data: the error text lives in RQ's failed registry / results.
* A worker killed with SIGKILL leaves its job in the StartedJobRegistry until
  ``timeout + 60`` s pass (RQ's own cleanup). ``recover_abandoned_jobs`` finds
  jobs whose worker is provably gone sooner (through RQ's public registry and
  execution API) and hands them to the same RQ cleanup
  (``StartedJobRegistry.cleanup``), which retries them. Only the worker and
  ``GET /queue`` run it; reading one job's status has no side effect.
"""

from __future__ import annotations

import os
import socket
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import redis
from rq import Queue, Retry, Worker
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import current_timestamp

from ..api_keys import LOCAL, KeyGrant
from ..batching import batches
from ..config import Settings, get_settings
from ..errors import InputError, NotFound
from ..redact import failure_line
from .job_hash import CheckedJob
from .payloads import DecodeJob
from .registry_read import BAD_ENTRY, live_workers, purge_started_junk, queue_names, worker_summary
from .waiting import wait_until_terminal

JOB_FUNCTION = "oodsynth.worker.decode_job.decode_task"
REFUSED_KEY = "oodsynth:refused-jobs"  # entries the worker refused, newest first: JSON {id, queue, reason, at}
REFUSED_KEPT = 1000
MAX_RETRY_INTERVAL_S = 900


def connect() -> redis.Redis:
    """A bytes-mode client on the configured (or embedded) Redis, as RQ needs."""
    from ..state.redis_conn import get_redis

    return get_redis(decode_responses=False)


class PayloadSerializer(JSONSerializer):
    """RQ's JSON, written by orjson: 15x faster than ``json.dumps`` on job payloads. Any ``JSONSerializer``
    (the worker, rq-dashboard) reads it."""

    @staticmethod
    def dumps(obj, *args, **kwargs) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


PAYLOAD_ZLIB_LEVEL = 0


class CompactJob(CheckedJob):
    """An RQ job whose payload is stored (zlib level 0) instead of compressed at RQ's default level 6.

    The payload is mostly base64 float32 vectors, which zlib cannot shrink by much: level 1 saved 27 % of
    the bytes for 1.1 ms of CPU per 10-image job, and compressing was the largest part of ``POST /generate``'s
    CPU. A level-0 stream is still zlib, so every reader (``Job.restore``) reads it.
    """

    def to_dict(self, include_meta: bool = True, include_result: bool = True) -> dict:
        # RQ's to_dict has no level argument: hand it an empty payload (its zlib call is then
        # free) and put the payload, compressed at our level, in its place.
        data, self._data = self.data, b""
        try:
            obj = super().to_dict(include_meta=include_meta, include_result=include_result)
        finally:
            self._data = data
        obj["data"] = zlib.compress(data, PAYLOAD_ZLIB_LEVEL)
        return obj


def get_queue(connection: redis.Redis | None = None, name: str | None = None) -> Queue:
    return Queue(
        name or get_settings().queue_name,
        connection=connection if connection is not None else connect(),
        serializer=PayloadSerializer,
        job_class=CompactJob,
    )


def retry_intervals(retries: int) -> list[int]:
    """Back-off per retry: the first at once (the usual cause is a dead worker, not the job), then 30 s x 4^k.

    RQ picks ``intervals[len(intervals) - retries_left]``, so the list has one entry per retry.
    """
    return [0] + [min(30 * 4**k, MAX_RETRY_INTERVAL_S) for k in range(retries - 1)]


def enqueue_decode(
    job: DecodeJob,
    connection: redis.Redis | None = None,
    *,
    settings: Settings | None = None,
    images_per_job: int | None = None,
    queue_name: str | None = None,
) -> list[str]:
    """Split ``job`` into RQ jobs of ``images_per_job`` items and enqueue them atomically."""
    settings = settings or get_settings()
    size = images_per_job or settings.images_per_job
    if size < 1:
        raise InputError("images_per_job", f"must be >= 1, got {size}")
    queue = get_queue(connection, queue_name or settings.queue_name)
    retry = (
        Retry(max=settings.job_retries, interval=retry_intervals(settings.job_retries))
        if settings.job_retries
        else None
    )
    # One dump of the job, then per RQ job a slice of its items: no per-job copy of the model.
    shared = job.model_dump(mode="json", exclude={"items"})
    items = job.model_dump(mode="json", include={"items"}, exclude={"items": {"__all__": {"vector"}}})["items"]
    for item, model in zip(items, job.items):
        item["vector"] = model.packed_vector()
    data = []
    for part in batches(items, size):
        data.append(
            Queue.prepare_data(
                JOB_FUNCTION,
                args=({**shared, "items": list(part)},),
                timeout=settings.job_timeout_s,
                result_ttl=settings.result_ttl_s,
                failure_ttl=settings.result_ttl_s,
                retry=retry,
                description=f"decode {len(part)} images into {job.dataset}",
                meta={"dataset": job.dataset, "progress": {"done": 0, "total": len(part)}},
            )
        )
    with queue.connection.pipeline() as pipe:  # MULTI/EXEC: every job or none
        jobs = queue.enqueue_many(data, pipeline=pipe)
        pipe.execute()
    return [j.id for j in jobs]


# -- status -----------------------------------------------------------------------------
def no_job(job_id: str) -> NotFound:
    return NotFound("job_id", f"no job {job_id[:100]!r} (unknown, expired or not a job id)")


def fetch_job(job_id: str, connection: redis.Redis | None = None) -> Job:
    """The RQ job; ``NotFound`` when unknown (or expired)."""
    try:
        job = CheckedJob.fetch(  # its hash checked before RQ reads it: a zlib bomb is never inflated past the cap
            job_id, connection=connection if connection is not None else connect(), serializer=JSONSerializer
        )
        job.args  # noqa: B018  (decode the payload now: a job written without JSON is not ours)
        return job
    except (NoSuchJobError, ValueError, DeserializationError):  # ValueError: not a job id RQ accepts ('*', NUL)
        raise no_job(job_id) from None


def _error_text(job: Job) -> str | None:
    result = job.latest_result()
    if result is not None and result.type == Result.Type.FAILED:
        return failure_line(result.exc_string)  # the traceback stays in RQ's registry and the worker's log
    return None


def job_status(job_id: str, connection: redis.Redis | None = None, caller: KeyGrant = LOCAL) -> dict[str, Any]:
    """``{id, status, progress: {done, total}, result, error, dataset, retries_left}``; NotFound if unknown, or
    when the caller does not see the payload's tenant (the same answer: a job of another tenant is not there)."""
    job = fetch_job(job_id, connection)
    payload = job.args[0] if job.args and isinstance(job.args[0], dict) else {}
    if not caller.sees(payload.get("tenant")):
        raise no_job(job_id)
    status = job.get_status(refresh=False)
    meta = job.get_meta(refresh=False)
    progress = dict(meta.get("progress") or {})
    progress.setdefault("done", 0)
    progress.setdefault("total", len(job.args[0].get("items", [])) if job.args else 0)
    status_text = status.value if isinstance(status, JobStatus) else str(status)
    return {
        "id": job.id,
        "status": status_text,
        "progress": {"done": int(progress["done"]), "total": int(progress["total"])},
        "result": job.return_value() if status_text == "finished" else None,
        # The latest failure's last line: the final one when failed, the last retried one otherwise.
        "error": _error_text(job),
        "dataset": meta.get("dataset"),
        "retries_left": job.retries_left,
    }


def queue_stats(connection: redis.Redis | None = None) -> dict[str, Any]:
    """Per-queue counts (queued and each registry), the live workers with their current job, refused entries.

    Registry entries that are not ours or not readable (junk written to Redis) are skipped and counted under
    ``skipped_entries``, never a failure of the whole answer (``registry_read``).
    """
    connection = connection if connection is not None else connect()
    registered, junk_queues = queue_names(connection)
    queues = []
    for name in sorted({get_settings().queue_name, *registered}):
        recover_abandoned_jobs(connection, name)
        q = get_queue(connection, name)
        queues.append(
            {
                "name": name,
                "queued": q.count,
                "started": q.started_job_registry.count,
                "finished": q.finished_job_registry.count,
                "failed": q.failed_job_registry.count,
                "deferred": q.deferred_job_registry.count,
                "scheduled": q.scheduled_job_registry.count,
            }
        )
    found, junk_workers = live_workers(connection)
    workers = [s for s in map(worker_summary, found) if s is not None]
    skipped = junk_queues + junk_workers + len(found) - len(workers)
    return {"queues": queues, "workers": workers, "refused_jobs": refused_jobs(connection), "skipped_entries": skipped}


def queue_counts(stats: dict[str, Any]) -> dict[str, Any]:
    """``queue_stats`` without what names a job, a host or a process: the answer for callers below admin."""
    return {
        "queues": stats["queues"],
        "workers": len(stats["workers"]),
        "refused_jobs": {"count": stats["refused_jobs"]["count"]},
        "skipped_entries": stats["skipped_entries"],
    }


def refused_jobs(connection: redis.Redis, latest: int = 5) -> dict:
    """``{"count": n, "latest": [...]}``: what the worker refused (``oodsynth.worker.allowlist``) and why."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.llen(REFUSED_KEY)
        pipe.lrange(REFUSED_KEY, 0, latest - 1)
        count, entries = pipe.execute()
    return {"count": int(count), "latest": [e for e in map(_refused_entry, entries) if e is not None]}


def _refused_entry(raw: bytes) -> dict | None:
    """One refused-job entry as written by the worker; None for anything else in the list."""
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return entry if isinstance(entry, dict) else None


# -- abandoned jobs -----------------------------------------------------------------------
def pid_alive(pid: int) -> bool:
    """Whether a process of this host has that pid (one we may not signal is alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _worker_gone(name: str, connection: redis.Redis, here: str) -> bool:
    """True when the worker is provably dead: its key expired, it said so, or (same host) its pid is gone."""
    try:
        worker = Worker.find_by_key(Worker.redis_worker_namespace_prefix + name, connection=connection)
    except (*BAD_ENTRY, UnicodeDecodeError):  # a junk hash under a worker's name: no live worker wrote it
        return True
    if worker is None or worker.death_date is not None:
        return True
    if worker.hostname != here or not worker.pid:
        return False  # another machine: only RQ's timeout-based cleanup can tell
    if not pid_alive(worker.pid):
        return True
    # Same host and pid, but a newer worker owns that pid (a restarted container is pid 1 again).
    for other in live_workers(connection)[0]:
        if other.name != name and other.hostname == here and other.pid == worker.pid:
            if other.birth_date and worker.birth_date and other.birth_date > worker.birth_date:
                return True
    return False


def recover_abandoned_jobs(connection: redis.Redis | None = None, queue_name: str | None = None) -> list[str]:
    """Retry (or fail, when out of retries) started jobs whose worker is gone; returns their ids.

    The entries are marked expired and RQ's ``StartedJobRegistry.cleanup`` does
    the rest, exactly as it would after ``timeout + 60`` s: failure callbacks,
    ``Retry`` bookkeeping, or the failed registry with an ``AbandonedJobError``.
    """
    connection = connection if connection is not None else connect()
    registry = get_queue(connection, queue_name).started_job_registry
    purge_started_junk(connection, registry.key)
    here = socket.gethostname()
    abandoned: list[Execution] = []
    for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False):
        try:
            worker_name = Execution.fetch(execution_id, job_id, connection).worker_name
        except ValueError:  # the execution record expired with its worker
            worker_name = ""
        if not worker_name or _worker_gone(worker_name, connection, here):
            abandoned.append(Execution(execution_id, job_id, connection))
    if not abandoned:
        return []
    now = current_timestamp()
    with connection.pipeline() as pipe:  # MULTI: the check and the move see the same registry
        for execution in abandoned:  # xx: only entries still there (a live worker may have just finished)
            pipe.zscore(registry.key, execution.composite_key)
            registry.add_execution(execution, pipe, ttl=0, xx=True)
        replies = pipe.execute()
    registry.cleanup(timestamp=now)
    return [e.job_id for e, score in zip(abandoned, replies[::2]) if score is not None]


# -- waiting --------------------------------------------------------------------------------
def wait_for_jobs(
    job_ids: Sequence[str],
    connection: redis.Redis | None = None,
    *,
    timeout: float | None = None,
    poll_s: float = 0.5,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Poll until every job is terminal; ``progress(done_images, total_images)`` after each poll.

    Raises ``NotFound`` for an unknown id and ``TimeoutError`` naming the unfinished jobs.
    """
    connection = connection if connection is not None else connect()
    return wait_until_terminal(
        lambda job_id: job_status(job_id, connection), job_ids, timeout=timeout, poll_s=poll_s, progress=progress
    )
