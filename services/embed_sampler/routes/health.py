"""Operational routes: liveness with a Redis check, and Prometheus metrics."""

from __future__ import annotations

import logging

import redis
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from ..auth import READ
from ..observability import metrics_response
from ..schemas import Health
from ..state import get_redis_dep

router = APIRouter(tags=["operations"])
log = logging.getLogger("oodsynth.api")


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "Redis does not answer."}},
    summary="Liveness and Redis reachability",
)
def healthz(client: redis.Redis = Depends(get_redis_dep)):
    """200 when Redis answers a PING, 503 (with the error's type; details in the log) when it does not."""
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        log.warning("healthz: redis unavailable: %s", exc)
        return JSONResponse({"status": "unavailable", "redis": type(exc).__name__}, status_code=503)
    return Health(status="ok", redis="ok")


@router.get("/metrics", dependencies=[READ], summary="Prometheus metrics", response_class=Response)
def metrics() -> Response:
    """Request counts and latency per route, fits stored, samples drawn (text exposition format)."""
    return metrics_response()
