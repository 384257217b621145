"""One error shape for every failure: ``{"detail": [{"loc", "msg", "type"}]}``.

FastAPI answers request-validation failures with that shape already; the
handlers here give the same shape to errors found later (unknown fit, bad
bank, unknown class, bad sampler params), so a client always learns which
field was wrong. Anything unexpected becomes a JSON 500 without a traceback,
and a lost Redis a 503.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any

import pydantic
import redis
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from oodsynth.bank import BankError
from oodsynth.registry import FieldError

log = logging.getLogger("oodsynth.api")

Loc = Sequence[str | int]
MAX_ECHOED_INPUT = 2000  # characters of rejected input echoed back in a 422


class APIError(Exception):
    """An error to answer as ``status`` with a list of located messages."""

    def __init__(self, status: int, errors: list[dict]):
        super().__init__(errors[0]["msg"] if errors else str(status))
        self.status = status
        self.errors = errors


def error(loc: Loc, msg: str, type: str = "value_error") -> dict:
    return {"loc": list(loc), "msg": msg, "type": type}


def field_error(loc: Loc, msg: str, status: int = 422, type: str = "value_error") -> APIError:
    return APIError(status, [error(loc, msg, type)])


def not_found(loc: Loc, msg: str) -> APIError:
    return APIError(404, [error(loc, msg, "not_found")])


def split_field(field: str) -> list[str | int]:
    """``"classes[2]"`` -> ``["classes", 2]``; ``"a.b"`` -> ``["a", "b"]``."""
    parts: list[str | int] = []
    for token in re.findall(r"[^.\[\]]+|\[\d+\]", field):
        parts.append(int(token[1:-1]) if token.startswith("[") else token)
    return parts


def from_field_error(exc: FieldError | BankError, prefix: Loc) -> APIError:
    status = getattr(exc, "status", 422)
    return field_error([*prefix, *split_field(exc.field)], exc.message, status)


def from_pydantic(exc: pydantic.ValidationError, prefix: Loc) -> APIError:
    """Re-root a pydantic error list under ``prefix`` (e.g. sampler params under ``body.params``)."""
    errors = [error([*prefix, *e["loc"]], e["msg"], e["type"]) for e in exc.errors(include_url=False)]
    return APIError(422, errors or [error(prefix, str(exc))])


def json_safe(value: Any) -> Any:
    """NaN/inf -> None, recursively: FastAPI echoes the rejected ``input``, and JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(exc.errors())
        for e in errors:  # never echo megabytes of rejected input back
            if len(repr(e.get("input"))) > MAX_ECHOED_INPUT:
                e.pop("input", None)
        return JSONResponse({"detail": json_safe(errors)}, status_code=422)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse({"detail": exc.errors}, status_code=exc.status)

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("redis unavailable: %s", exc)
        return JSONResponse(
            {"detail": [error(["redis"], f"Redis is unavailable: {exc}", "service_unavailable")]},
            status_code=503,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"detail": [error([], f"internal error ({type(exc).__name__})", "internal_error")]},
            status_code=500,
        )
