"""Scheduler locks: a dead holder's lock is released, a live or unknown holder's is kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import redis
from rq.scheduler import RQScheduler
from rq.utils import utcformat

from oodsynth.worker.scheduler_locks import STALE_AFTER_S, release_dead_scheduler_locks


def _holder(client: redis.Redis, queue: str, name: str, beat_age_s: float, host: str = "elsewhere") -> None:
    beat = datetime.now(UTC) - timedelta(seconds=beat_age_s)
    client.set(RQScheduler.get_locking_key(queue), name, ex=61)
    fields = {"name": name, "hostname": host, "pid": "1", "queues": queue, "created_at": utcformat(beat)}
    client.hset(f"rq:scheduler:{name}", mapping={**fields, "last_heartbeat": utcformat(beat)})


def test_only_dead_holders_lose_their_locks(redis_url):
    client = redis.Redis.from_url(redis_url)
    _holder(client, "stale", "s1", STALE_AFTER_S + 5)  # another host, silent for longer than a live one can be
    _holder(client, "live", "s2", 1)
    client.set(RQScheduler.get_locking_key("unborn"), "s3", ex=61)  # lock taken, hash not written yet
    _holder(client, "junk", "s4", 1)
    client.hset("rq:scheduler:s4", "pid", "not a pid")
    released = release_dead_scheduler_locks(client, ["stale", "live", "unborn", "junk", "free"])
    assert sorted(released) == ["junk", "stale"]
    assert client.get(RQScheduler.get_locking_key("live")) == b"s2"
    assert client.get(RQScheduler.get_locking_key("unborn")) == b"s3"
