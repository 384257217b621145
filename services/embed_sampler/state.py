"""Route dependencies: the process's Redis client and the registries built on it.

One client (and connection pool) per Redis URL per process; the URL is read
on each call so a changed ``OODSYNTH_REDIS_URL`` (tests, restarts) is honoured.
The registries are cheap views over the client; decoded fits are cached inside
``FitRegistry`` itself.
"""

from __future__ import annotations

import threading

import redis

from oodsynth.redis_conn import redis_url
from oodsynth.registry import FitRegistry, SampleRegistry

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


def get_redis_dep() -> redis.Redis:
    """A bytes-mode client (RQ and the registries need raw bytes)."""
    url = redis_url()
    with _lock:
        client = _clients.get(url)
        if client is None:
            client = _clients[url] = redis.Redis.from_url(url, decode_responses=False)
    return client


def get_fits() -> FitRegistry:
    return FitRegistry(get_redis_dep())


def get_samples() -> SampleRegistry:
    return SampleRegistry(get_redis_dep())
