"""RQ's queue and worker registries read so that no entry in Redis can break the reader.

Whoever can write to Redis can add a queue name that is not UTF-8 or a worker
hash of junk; RQ's own ``Queue.all`` and ``Worker.all`` decode every entry and
raise on the first bad one, which took ``GET /queue`` (and the worker's
recovery of abandoned jobs) down with it. Here a bad entry is skipped and
counted, and the rest is read as RQ reads it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer
from rq.worker import BaseWorker
from rq.worker_registration import REDIS_WORKER_KEYS

log = logging.getLogger("oodsynth.queue")

# What ``oodsynth`` and RQ name queues: printable ASCII words; anything else in the set is not ours.
QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,100}$")
WORKER_KEY = re.compile(r"^rq:worker:[A-Za-z0-9_.:\-]{1,200}$")
MAX_ENTRIES = 1000  # a set of a million junk names must not make one /queue answer huge or slow
BAD_ENTRY = (ValueError, TypeError, KeyError, AttributeError, redis.exceptions.ResponseError)


def _texts(connection: redis.Redis, key: str, pattern: re.Pattern[str]) -> tuple[list[str], int]:
    """The members of set ``key`` that decode and match ``pattern`` (at most ``MAX_ENTRIES``), and the junk count."""
    good: list[str] = []
    junk = 0
    for raw in connection.sscan_iter(key, count=500):
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError:
            junk += 1
            continue
        if pattern.match(text) and len(good) < MAX_ENTRIES:
            good.append(text)
        else:
            junk += 1
    return sorted(good), junk


def queue_names(connection: redis.Redis) -> tuple[list[str], int]:
    """Names of the registered queues, and how many registered entries were not queue keys of ours."""
    keys, junk = _texts(connection, Queue.redis_queues_keys, re.compile(r"^rq:queue:[A-Za-z0-9_.:\-]{1,100}$"))
    return [k.removeprefix(Queue.redis_queue_namespace_prefix) for k in keys], junk


def live_workers(connection: redis.Redis) -> tuple[list[BaseWorker], int]:
    """The registered workers RQ can read, and how many entries it could not (skipped, logged)."""
    keys, junk = _texts(connection, REDIS_WORKER_KEYS, WORKER_KEY)
    workers = []
    for key in keys:
        try:
            worker = Worker.find_by_key(key, connection=connection, serializer=JSONSerializer)
        except (*BAD_ENTRY, UnicodeDecodeError) as exc:
            log.warning("skipping worker entry %r: %s", key[:200], exc)
            junk += 1
            continue
        if worker is not None:
            workers.append(worker)
    return workers, junk


# A started-registry entry: "<job id>:<execution id>" (RQ's composite key); anything else RQ cannot parse.
STARTED_ENTRY = re.compile(r"^[A-Za-z0-9_-]{1,128}:[A-Za-z0-9_-]{1,128}$")


def purge_started_junk(connection: redis.Redis, key: str) -> int:
    """Remove the entries of a started registry that are not RQ's composite keys (RQ's parser raises on them,
    taking ``GET /queue`` and the recovery of abandoned jobs down); how many were removed."""
    junk = []
    for raw, _ in connection.zscan_iter(key, count=1000):
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError:
            text = ""
        if not STARTED_ENTRY.match(text):
            junk.append(raw)
    if junk:
        log.warning("removed %d unreadable entries from %s", len(junk), key)
        return int(connection.zrem(key, *junk))
    return 0


def worker_summary(w: BaseWorker) -> dict[str, Any] | None:
    """What ``/queue`` shows of one worker; None when its hash holds junk."""
    try:
        return {
            "name": w.name,
            "state": w.get_state(),
            "current_job": w.get_current_job_id(),
            "queues": [q for q in w.queue_names() if QUEUE_NAME.match(q)],
            "hostname": w.hostname,
            "pid": w.pid,
            "last_heartbeat": w.last_heartbeat.isoformat() if w.last_heartbeat else None,
        }
    except (*BAD_ENTRY, UnicodeDecodeError) as exc:
        log.warning("skipping worker %r: %s", w.name[:200], exc)
        return None
