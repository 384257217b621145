"""Route dependencies: settings, the process's Redis client, and the registries built on it.

Process-wide state lives on ``app.state`` (set up by ``create_app``): the
decoded-fit cache and the encoder cache, each with its own invalidation rule
(a fit's stored version; the checkpoint's path and mtime). Settings come from
``oodsynth.config.get_settings`` (cleared with ``get_settings.cache_clear()``).
One Redis client (and connection pool) per URL per process; the URL is read on
each call so a changed ``OODSYNTH_REDIS_URL`` (tests, restarts) is honoured.

Dependencies that never block are ``async def``: FastAPI runs a plain ``def``
dependency in the threadpool, a thread hop per dependency per request that
cost ``POST /generate`` more than its own work. ``get_redis_dep`` stays a
``def``: it may (re)start the embedded Redis.
"""

from __future__ import annotations

import threading

import redis
from fastapi import Depends, Request
from redis.backoff import NoBackoff
from redis.retry import Retry

from oodsynth.config import Settings, get_settings
from oodsynth.state.fits import FitRegistry
from oodsynth.state.redis_conn import redis_url
from oodsynth.state.samples import SampleRegistry

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


async def get_settings_dep() -> Settings:
    return get_settings()


def get_redis_dep() -> redis.Redis:
    """A bytes-mode client (RQ and the registries need raw bytes), with the settings' socket timeout."""
    url = redis_url()
    with _lock:
        client = _clients.get(url)
        if client is None:
            timeout = get_settings().redis_timeout_s
            # One retry after a timeout: the API's writes (a sample's or a fit's hash) are idempotent, and a
            # MULTI of jobs repeated would at worst queue a job id twice, whose second run finds its images stored.
            client = _clients[url] = redis.Redis.from_url(
                url,
                decode_responses=False,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 1),
                retry_on_error=[redis.exceptions.TimeoutError],
            )
    return client


async def get_fits(request: Request, client: redis.Redis = Depends(get_redis_dep)) -> FitRegistry:
    return FitRegistry(client, cache=request.app.state.fit_cache)


async def get_samples(
    client: redis.Redis = Depends(get_redis_dep), settings: Settings = Depends(get_settings_dep)
) -> SampleRegistry:
    return SampleRegistry(client, ttl_s=settings.sample_ttl_s, budget_bytes=settings.sample_budget_bytes)
