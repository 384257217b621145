"""Operational routes: liveness with a Redis check, and Prometheus metrics."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from ..auth import READ
from ..observability import metrics_response
from ..schemas import Health
from ..state import get_redis_dep

router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "Redis does not answer."}},
    summary="Liveness and Redis reachability",
)
def healthz(client: redis.Redis = Depends(get_redis_dep)):
    """200 when Redis answers a PING, 503 (with the error) when it does not."""
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        return JSONResponse({"status": "unavailable", "redis": str(exc)}, status_code=503)
    return Health(status="ok", redis="ok")


@router.get("/metrics", dependencies=[READ], summary="Prometheus metrics", response_class=Response)
def metrics() -> Response:
    """Request counts and latency per route, fits stored, samples drawn (text exposition format)."""
    return metrics_response()
