"""Each tenant's samples within a byte budget of their own, and a tombstone for every sample evicted to keep them so.

A tenant's index is a sorted set (sample id -> when it was stored) and a hash (sample id -> its stored bytes).
Tenant ``default`` keeps the keys of the one index from before tenants, so the samples stored then are still
counted and nothing is migrated; tenant ``t`` has the same keys with ``:t`` appended (a slug: no clash). A put
evicts only the putting tenant's oldest samples, so one client's large draws never drop another's.

An evicted sample leaves ``oodsynth:samples:evicted:<id>`` (its tenant and when) for the rest of the sample's TTL:
its owner then reads a 410 that says why, not a 404 that reads like a typo. The tombstones sit under
``oodsynth:samples:``, not ``oodsynth:sample:``, so a scan of stored samples never counts one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from ..api_keys import DEFAULT_TENANT
from .blobs import as_bytes, hash_mapping

SAMPLE_TIMES = "oodsynth:samples:times"  # tenant default's index: sample id -> when it was stored
SAMPLE_SIZES = "oodsynth:samples:bytes"  # tenant default's index: sample id -> its stored size
EVICTED_PREFIX = "oodsynth:samples:evicted:"


def index_keys(tenant: str | None) -> tuple[str, str]:
    """``(times, sizes)``: the keys of a tenant's index (None: stored before tenants, so ``default``)."""
    if not tenant or tenant == DEFAULT_TENANT:
        return SAMPLE_TIMES, SAMPLE_SIZES
    return f"{SAMPLE_TIMES}:{tenant}", f"{SAMPLE_SIZES}:{tenant}"


@dataclass(frozen=True)
class Eviction:
    """What a tombstone says: whose sample it was, and when it was evicted (epoch seconds)."""

    tenant: str
    at: float


@dataclass(frozen=True)
class SampleBudget:
    """Keeps each tenant's samples within ``budget_bytes``; ``key_of`` names a sample's own Redis key."""

    client: redis.Redis
    ttl_s: int
    budget_bytes: int
    key_of: Callable[[str], str]

    def record(self, pipe: redis.client.Pipeline, tenant: str, sample_id: str, nbytes: int) -> None:
        """Queue the index entry of a sample being put (in the put's own transaction)."""
        times, sizes = index_keys(tenant)
        pipe.zadd(times, {sample_id: time.time()})
        pipe.hset(sizes, sample_id, nbytes)

    def forget(self, pipe: redis.client.Pipeline, tenant: str | None, sample_id: str) -> None:
        """Queue dropping a deleted sample's index entry."""
        times, sizes = index_keys(tenant)
        pipe.zrem(times, sample_id)
        pipe.hdel(sizes, sample_id)

    def make_room(self, tenant: str, incoming: int) -> list[str]:
        """Forget the tenant's expired entries, then evict its oldest samples until ``incoming`` more bytes fit
        within the budget; the ids evicted (a sample larger than the whole budget still goes in, alone)."""
        times, sizes_key = index_keys(tenant)
        expired = self.client.zrangebyscore(times, "-inf", time.time() - self.ttl_s)
        if expired:
            self.client.zrem(times, *expired)
            self.client.hdel(sizes_key, *expired)
        sizes = {as_bytes(k).decode(): int(v) for k, v in self.client.hgetall(sizes_key).items()}
        total = sum(sizes.values()) + incoming
        evict: list[str] = []
        for raw in self.client.zrange(times, 0, -1) if total > self.budget_bytes else []:
            if total <= self.budget_bytes:
                break
            sample_id = as_bytes(raw).decode()
            evict.append(sample_id)
            total -= sizes.get(sample_id, 0)
        return self._evict(tenant, evict) if evict else []

    def _evict(self, tenant: str, evict: list[str]) -> list[str]:
        """Delete ``evict`` and leave a tombstone for each still stored, in one transaction: a Redis too full for the
        tombstones refuses it whole (503), so no sample ever goes without one. The ids tombstoned."""
        with self.client.pipeline(transaction=False) as pipe:
            for sample_id in evict:
                pipe.pttl(self.key_of(sample_id))
            ttls_ms = pipe.execute()
        gone = [(s, int(ms)) for s, ms in zip(evict, ttls_ms) if int(ms) != -2]  # -2: expired meanwhile, not evicted
        times, sizes = index_keys(tenant)
        stamp = hash_mapping({"tenant": tenant.encode(), "reason": b"budget", "at": repr(time.time()).encode()})
        with self.client.pipeline(transaction=True) as pipe:
            for sample_id, ms in gone:
                pipe.hset(EVICTED_PREFIX + sample_id, mapping=stamp)
                pipe.pexpire(EVICTED_PREFIX + sample_id, ms if ms > 0 else self.ttl_s * 1000)
            pipe.delete(*(self.key_of(s) for s in evict))
            pipe.zrem(times, *evict)
            pipe.hdel(sizes, *evict)
            pipe.execute()
        return [s for s, _ in gone]

    def eviction(self, sample_id: str) -> Eviction | None:
        """The tombstone of a sample evicted for the budget; None when there is none (never evicted, or long ago)."""
        found = self.client.hmget(EVICTED_PREFIX + sample_id, ["tenant", "at"])
        tenant, at = (None if v is None else as_bytes(v).decode() for v in found)
        return None if tenant is None else Eviction(tenant, float(at or 0))
