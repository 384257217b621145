"""Operational routes: liveness with a Redis check (reachable, and able to take writes), and Prometheus metrics."""

from __future__ import annotations

import logging

import redis
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from ..auth import READ
from ..errors import REDIS_RETRY_AFTER_S
from ..observability import metrics_response
from ..schemas import Health, RedisMemory
from ..state import get_redis_dep

router = APIRouter(tags=["operations"])
log = logging.getLogger("oodsynth.api")

PROBE_KEY = "oodsynth:healthz"  # a write refused here is a write every route would have refused
PRESSURE = 0.9  # used / maxmemory from which /healthz says "degraded"


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "Redis does not answer, or refuses writes (out of memory)."}},
    summary="Liveness, Redis reachability and memory pressure",
)
def healthz(client: redis.Redis = Depends(get_redis_dep)):
    """200 ``ok``, or ``degraded`` when Redis uses 90 % of its maxmemory or more; 503 when Redis does not
    answer or refuses a write (with the error's type; details in the log). One round trip: INFO memory and a
    probe write (SET with a TTL, which Redis refuses exactly when it refuses the API's writes)."""
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.info("memory")
            pipe.set(PROBE_KEY, b"1", ex=60)
            info, written = pipe.execute(raise_on_error=False)
    except redis.exceptions.RedisError as exc:
        log.warning("healthz: redis unavailable: %s", exc)
        return JSONResponse({"status": "unavailable", "redis": type(exc).__name__}, status_code=503)
    memory = _memory(info) if isinstance(info, dict) else None
    if isinstance(written, Exception):
        log.warning("healthz: redis refuses writes: %s", written)
        out_of_memory = isinstance(written, redis.exceptions.OutOfMemoryError) or str(written).startswith("OOM")
        refused = "out_of_memory" if out_of_memory else type(written).__name__
        body = Health(status="unavailable", redis=refused, memory=memory).model_dump()
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(REDIS_RETRY_AFTER_S)})
    if memory is not None and memory.fraction is not None and memory.fraction >= PRESSURE:
        return Health(status="degraded", redis="memory_pressure", memory=memory)
    return Health(status="ok", redis="ok", memory=memory)


def _memory(info: dict) -> RedisMemory:
    used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    return RedisMemory(
        used_bytes=used,
        max_bytes=limit or None,
        fraction=round(used / limit, 4) if limit else None,
        policy=str(info.get("maxmemory_policy", "")) or None,
    )


@router.get("/metrics", dependencies=[READ], summary="Prometheus metrics", response_class=Response)
def metrics() -> Response:
    """Request counts and latency per route, fits stored, samples drawn (text exposition format)."""
    return metrics_response()
