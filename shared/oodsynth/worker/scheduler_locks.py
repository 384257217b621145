"""Scheduler locks of dead schedulers released at once, so a retried job waits out its interval, not minutes.

A retry with a back-off waits in RQ's ScheduledJobRegistry until a scheduler
moves it to the queue, and only the holder of the queue's scheduler lock does.
A killed worker's scheduler leaves its lock behind for up to 61 s (RQ's TTL),
and RQ's worker only tries the lock again at its maintenance interval (10 min by
default, and only when its blocking dequeue wakes up): a retried job sat in
"scheduled" for 13 minutes. Here a lock is released when its holder is provably
dead: on this host its pid is gone, on any host its heartbeat (written every
second) is ``STALE_AFTER_S`` old. The worker checks at start and at every
maintenance (``MAINTENANCE_INTERVAL_S``, with a dequeue that wakes as often).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable
from datetime import UTC, datetime

import redis
from rq.exceptions import SchedulerNotFound
from rq.scheduler import RQScheduler
from rq.scripts import release_lock

from ..queue.enqueue import pid_alive

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_S = 15  # RQ's default is 600
WORKER_TTL_S = MAINTENANCE_INTERVAL_S + 15  # RQ's blocking dequeue waits worker_ttl - 15 s between maintenances
STALE_AFTER_S = 30.0  # a live scheduler writes its heartbeat every second; 30 s leaves room for clock skew


def holder_dead(scheduler: RQScheduler, here: str, now: datetime | None = None) -> bool:
    """Whether the scheduler that holds a lock is provably dead (a live one is never judged dead)."""
    if scheduler.hostname == here and not pid_alive(scheduler.pid):
        return True
    beat = scheduler.last_heartbeat
    if beat is None:
        return False
    beat = beat if beat.tzinfo else beat.replace(tzinfo=UTC)
    return ((now or datetime.now(UTC)) - beat).total_seconds() > STALE_AFTER_S


def release_dead_scheduler_locks(connection: redis.Redis, queue_names: Iterable[str]) -> list[str]:
    """Release the scheduler lock of each queue whose holder is dead; the queues whose lock was released.

    A lock without its holder's hash is left alone: a scheduler takes its lock a moment before it writes
    its hash, and RQ's TTL ends such a lock within 61 s anyway.
    """
    here = socket.gethostname()
    released = []
    for name in queue_names:
        key = RQScheduler.get_locking_key(name)
        holder = connection.get(key)
        if not holder:
            continue
        holder_name = holder.decode("utf-8", "replace") if isinstance(holder, bytes) else str(holder)
        try:
            scheduler = RQScheduler.fetch(holder_name, connection)
        except SchedulerNotFound:
            continue
        except (ValueError, KeyError, TypeError) as exc:  # a junk hash: no live scheduler wrote it
            log.warning("scheduler %r holding %s has an unreadable hash (%s)", holder_name[:100], name, exc)
        else:
            if not holder_dead(scheduler, here):
                continue
        if release_lock(connection, key, holder_name):  # only if that holder still has it
            log.warning("released the scheduler lock of %s held by dead scheduler %s", name, holder_name[:100])
            released.append(name)
    return released
