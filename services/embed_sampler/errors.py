"""One error shape for every failure: ``{"detail": [{"loc", "msg", "type"}]}``.

FastAPI answers request-validation failures with that shape already; one
handler gives the library's typed errors (``oodsynth.errors``) the same shape
and their status (422/404/409/410/503), with ``loc`` rooted where the field came
from (``path``, ``query`` or ``body``). Anything unexpected becomes a JSON 500
without a traceback; a lost Redis, or one that refuses commands (out of memory, read-only), a 503 with
``Retry-After`` and the reason; paths are redacted from messages
(the logs keep them).
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from oodsynth.errors import OodsynthError, Unavailable, join_loc, pydantic_message, split_field
from oodsynth.redact import redact_paths
from oodsynth.service.gallery_html import render_error

from .limits import body_limit, too_large

log = logging.getLogger("oodsynth.api")

MAX_ECHOED_INPUT = 2000  # characters of rejected input echoed back in a 422


def error(loc: list, msg: str, type: str = "value_error") -> dict:
    return {"loc": loc, "msg": msg, "type": type}


def locate(field: str | None, request: Request, exc: OodsynthError) -> list[str | int]:
    """``"classes[0]"`` -> ``["body", "classes", 0]``; path and query parameters keep their own section."""
    loc = split_field(field)
    if isinstance(exc, Unavailable):  # a setting or service, not part of the request
        return loc
    if exc.section:  # e.g. the authorization header
        return [exc.section, *loc]
    head = loc[0] if loc else None
    section = "path" if head in request.path_params else "query" if head in request.query_params else "body"
    return [section, *loc]


REDIS_RETRY_AFTER_S = 30


def redis_refusal(exc: redis.exceptions.RedisError) -> str:
    """What a client may read about a command Redis refused (the server's own text stays in the log)."""
    text = str(exc)
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or text.startswith("OOM"):
        return (
            "Redis is out of memory (maxmemory reached): writes are refused until space is freed. Delete what is no "
            "longer needed (DELETE /samples/{sample_id}, DELETE /fits/{name}: both work while it is full) or raise "
            "its maxmemory, then retry"
        )
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return "Redis is read-only (a replica, or writes are disabled): retry later"
    if isinstance(exc, redis.exceptions.BusyLoadingError):
        return "Redis is loading its data: retry shortly"
    return f"Redis refused the command ({type(exc).__name__}); retry later"


def allowed_methods(request: Request) -> str:
    """The methods the OpenAPI document gives the request's path (``GET, POST``), for a 405's ``Allow``."""
    paths = request.app.openapi().get("paths", {})
    for template, operations in paths.items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, request.url.path):
            return ", ".join(m.upper() for m in operations if m in HTTP_METHODS)
    return ""


HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def json_safe(value: Any) -> Any:
    """NaN/inf -> None, recursively: FastAPI echoes the rejected ``input``, and JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def wants_html(request: Request) -> bool:
    """A browser (``Accept: text/html``) asking for an HTML page (the gallery) gets its errors as a page too."""
    route_class = getattr(request.scope.get("route"), "response_class", None)
    route_class = getattr(route_class, "value", route_class)  # FastAPI's DefaultPlaceholder
    html_route = isinstance(route_class, type) and issubclass(route_class, HTMLResponse)
    return html_route and "text/html" in request.headers.get("accept", "")


def answer(request: Request, detail: list[dict], status: int, headers: dict | None = None) -> Response:
    """The ``detail`` list as JSON, or, for the answers the page documents both ways (404, 422), as an HTML page
    where ``wants_html``."""
    if status in (404, 422) and wants_html(request):
        errors = [(join_loc(e["loc"]), str(e["msg"])) for e in detail]
        return HTMLResponse(render_error(status, errors, dict(request.query_params)), status, headers=headers)
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
        errors = []
        for e in exc.errors():
            e = {**e, "msg": pydantic_message(e)}  # the same text the library's InputError.from_pydantic gives
            if len(repr(e.get("input"))) > MAX_ECHOED_INPUT:  # never echo megabytes of rejected input back
                e.pop("input", None)
            errors.append(jsonable_encoder(e))
        return answer(request, json_safe(errors), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """404 (no route), 405, 408 (body too slow), 413 (body over the cap) ...: the same ``detail`` list shape."""
        if exc.status_code == 413:  # a streamed body passed the cap (limits.BodyLimitMiddleware)
            return too_large(body_limit(request.headers.get("content-type", "")))
        if exc.status_code == 400:  # a body Starlette could not parse (malformed multipart): bad input, as bad JSON
            return JSONResponse({"detail": [error(["body"], str(exc.detail), "body_invalid")]}, status_code=422)
        loc = ["body"] if exc.status_code == 408 else []  # 408: the body did not arrive in time (limits.py)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # every method of the path, not only those of the route Starlette tried first
            headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
        return JSONResponse(
            {"detail": [error(loc, str(exc.detail), "http_error")]}, status_code=exc.status_code, headers=headers
        )

    @app.exception_handler(OodsynthError)
    async def _library_error(request: Request, exc: OodsynthError) -> Response:
        detail = [error(locate(field, request, exc), redact_paths(message), exc.type) for field, message in exc.errors]
        return answer(request, detail, exc.status, getattr(exc, "headers", None))

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("redis unavailable: %s", exc)
        return JSONResponse(
            {"detail": [error(["redis"], f"Redis is unavailable ({type(exc).__name__})", "service_unavailable")]},
            status_code=503,
        )

    @app.exception_handler(redis.exceptions.RedisError)
    async def _redis_refused(request: Request, exc: redis.exceptions.RedisError) -> JSONResponse:
        """Redis answered but refused the command: out of memory (maxmemory with noeviction), read-only, ..."""
        log.warning("redis refused %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(
            {"detail": [error(["redis"], redis_refusal(exc), "service_unavailable")]},
            status_code=503,
            headers={"Retry-After": str(REDIS_RETRY_AFTER_S)},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"detail": [error([], f"internal error ({type(exc).__name__})", "internal_error")]},
            status_code=500,
        )
