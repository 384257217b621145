"""Prometheus metrics: HTTP requests and latency per route, fits made, samples drawn.

Metrics live in prometheus_client's default registry (module-level, created
once per process) so building several apps in one process (tests, reloads)
does not register them twice. Routes are labelled by their path template
(``/fits/{name}``), never the raw path, to keep label cardinality bounded.
"""

from __future__ import annotations

import time

from fastapi import Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

HTTP_REQUESTS = Counter("oodsynth_http_requests_total", "HTTP requests answered.", ["method", "route", "status"])
HTTP_LATENCY = Histogram("oodsynth_http_request_duration_seconds", "HTTP request latency.", ["method", "route"])
FITS = Counter("oodsynth_fits_total", "Class-density fits stored.", ["density"])
FIT_SECONDS = Histogram(
    "oodsynth_fit_duration_seconds",
    "Time to fit class densities.",
    ["density"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
)
SAMPLES_DRAWN = Counter("oodsynth_samples_drawn_total", "Outlier vectors drawn.", ["method"])
SAMPLE_SECONDS = Histogram(
    "oodsynth_sample_duration_seconds",
    "Time to draw one sample request.",
    ["method"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
)


# The method label comes from this fixed set: a client can send any token as its method.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class MetricsMiddleware:
    """Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer streamed bodies)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in METHODS else "other"
            HTTP_REQUESTS.labels(method, template, str(status["code"])).inc()
            HTTP_LATENCY.labels(method, template).observe(time.perf_counter() - start)


def metrics_response() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
