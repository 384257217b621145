"""JSON request bodies over ``OFF_LOOP_BYTES`` are decoded and validated in the threadpool, not on the event loop.

FastAPI decodes a JSON body (``json.loads``) and validates it against the
route's model inside its async handler: for a 50 MB body that is seconds of
CPU during which the loop answers nobody, ``/healthz`` included. Routes of
the routers built with ``OffLoopBodyRoute`` read the body (the loop only
collects chunks), then decode and validate it in a worker thread and hand
FastAPI the validated model; FastAPI's own validation of a model instance
returns it as is (pydantic does not revalidate instances), so nothing large
runs on the loop. Bad JSON and invalid fields answer the same 422 as FastAPI's
own path. Small bodies stay on the loop: a thread hop costs more than they do (one that is not UTF-8 is
answered with the same 422, where FastAPI would give a bare 400).

A body over ``OFF_LOOP_BYTES`` takes its decoded size (``decoded_bytes``, estimated from the body before it is
decoded) from the process's memory budget (``limits.MEMORY``, settings ``heavy_memory_budget_bytes``) until
its answer is made: past the budget it answers 429 with ``Retry-After`` instead of being decoded, so eight
16 MiB bodies of small numbers no longer take the API to gigabytes.

Decoding is orjson's, not ``json.loads``: the GIL is held through each C call
(decode, then validation), so the loop can still wait for one call; orjson
makes the decode of 50 MB of floats 5x shorter (0.3 s against 1.4 s here).
It is also stricter: ``NaN``/``Infinity`` literals are invalid JSON, as the
JSON standard says.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from .limits import MEMORY

OFF_LOOP_BYTES = 256 * 1024  # decoding this much takes a few ms; larger bodies go to a thread
# A decoded JSON number costs a list slot (8 bytes) and a float (24) from orjson, and pydantic's validated copy
# as much again: 64 bytes for a value that can take 2 bytes of body ("1,"), 25x measured (bench/hostile_bodies.py).
BYTES_PER_VALUE = 64


def decoded_bytes(body: bytes) -> int:
    """An upper estimate of the memory a JSON body takes once decoded and validated, from its separators
    (one value per comma, at most), counted in C before anything is decoded."""
    return len(body) + (body.count(b",") + 1) * BYTES_PER_VALUE


def _is_json(content_type: str) -> bool:
    """FastAPI's rule: no content type, ``application/json`` or ``application/*+json`` bodies are decoded as JSON."""
    media = content_type.split(";", 1)[0].strip().lower()
    return not media or media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class OffLoopBodyRoute(APIRoute):
    """An ``APIRoute`` whose large JSON body is decoded and validated in the threadpool."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        body_field = self.body_field
        # One body model, not embedded: FastAPI validates the whole JSON document against it, and so can we.
        single_model = (
            body_field is not None
            and len(self.dependant.body_params) == 1
            and not (isinstance(body_field.field_info, params.Body) and body_field.field_info.embed)
        )

        async def route(request: Request) -> Response:
            ticket = MEMORY.ticket()
            try:
                if body_field is not None and _is_json(request.headers.get("content-type", "")):
                    body = await request.body()  # bounded by BodyLimitMiddleware (size) and its deadline (time)
                    # Starlette's Request.json() returns this cached value, so FastAPI does not decode again.
                    if len(body) > OFF_LOOP_BYTES:
                        ticket.admit(decoded_bytes(body))  # 429 before decoding when the budget is taken
                        request._json = await run_in_threadpool(_decode, body, body_field if single_model else None)
                    elif not _is_utf8(body):  # FastAPI would answer its bare 400; bad JSON is a 422 everywhere else
                        _decode(body, None)
                return await handler(request)  # the decoded body lives until the answer is made
            finally:
                ticket.release()

        return route


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _decode(body: bytes, body_field) -> Any:
    """The JSON document, validated into the route's body model when there is one (422 errors as FastAPI's)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:  # FastAPI's own shape for undecodable JSON (invalid UTF-8 included)
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ]
        ) from None
    if body_field is None:
        return document
    value, errors = body_field.validate(document, {}, loc=("body",))
    if errors:
        raise RequestValidationError(errors)
    return value
