"""Request limits: body caps, bounded expensive work, and work that stops when its client goes away.

Request-body caps: uploads (multipart) up to ``max_upload_bytes``, any other body up to ``max_request_bytes``.

Starlette's ``RequestBodyLimitMiddleware`` does the counting (a declared
Content-Length over the cap is refused before a byte is read; a streamed
body is cut off as soon as it passes the cap), so a 1 GiB junk upload costs
the server one chunk, not 1 GiB. This middleware only picks the cap per
request from the settings; the 413 reaches the client in the API's one
error shape (``errors.py``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import anyio
from anyio.lowlevel import RunVar
from fastapi import Depends
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oodsynth.config import get_settings
from oodsynth.deadline import cancel_on
from oodsynth.errors import TooBusy

T = TypeVar("T")
DISCONNECT_POLL_S = 0.25


_heavy_var: RunVar[anyio.CapacityLimiter] = RunVar("oodsynth_heavy_limiter")


def _heavy_limiter(slots: int) -> anyio.CapacityLimiter:
    """One limiter per event loop (a process serves on one), resized when the setting changes."""
    try:
        limiter = _heavy_var.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(slots)
        _heavy_var.set(limiter)
    if limiter.total_tokens != slots:
        limiter.total_tokens = slots
    return limiter


async def heavy_slot() -> AsyncIterator[None]:
    """A route dependency: one of ``max_heavy_requests`` slots for the request's whole handler, or 429 at once.

    The expensive routes (fits, sampling, features) hold one; when all are taken the request is refused
    with ``Retry-After`` instead of queueing without limit, so the API's memory is bounded by the slots
    times one request's peak (each bounded by the size caps).
    """
    settings = get_settings()
    limiter = _heavy_limiter(settings.max_heavy_requests)
    token = object()
    try:
        limiter.acquire_on_behalf_of_nowait(token)
    except anyio.WouldBlock:
        raise TooBusy(
            None,
            f"all {settings.max_heavy_requests} slots for fits, samples and features are busy "
            f"(settings OODSYNTH_MAX_HEAVY_REQUESTS); retry in {settings.busy_retry_after_s} s",
            retry_after=settings.busy_retry_after_s,
        ) from None
    try:
        yield
    finally:
        limiter.release_on_behalf_of(token)


HEAVY = Depends(heavy_slot)


class MemoryBudget:
    """Bytes reserved by the requests in flight in this process, against settings ``heavy_memory_budget_bytes``.

    A request whose estimate would take the total past the budget is refused (429, ``Retry-After``) unless
    nothing else holds a reservation: the size caps bound one request, and it must be able to run alone.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reserved = 0

    def ticket(self) -> MemoryTicket:
        return MemoryTicket(self)

    def _take(self, nbytes: int) -> None:
        settings = get_settings()
        with self._lock:
            if self.reserved and self.reserved + nbytes > settings.heavy_memory_budget_bytes:
                raise TooBusy(
                    None,
                    f"this request needs about {nbytes >> 20} MB and {self.reserved >> 20} MB of the memory budget "
                    f"({settings.heavy_memory_budget_bytes >> 20} MB, settings OODSYNTH_HEAVY_MEMORY_BUDGET_BYTES) "
                    f"are taken; retry in {settings.busy_retry_after_s} s",
                    retry_after=settings.busy_retry_after_s,
                )
            self.reserved += nbytes

    def _give(self, nbytes: int) -> None:
        with self._lock:
            self.reserved -= nbytes


class MemoryTicket:
    """One request's reservation: ``admit(nbytes)`` once its size is known (in any thread), ``release()`` at its end."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget, self.nbytes = budget, 0

    def admit(self, nbytes: int) -> None:
        self.budget._take(nbytes)
        self.nbytes = nbytes

    def release(self) -> None:
        if self.nbytes:
            self.budget._give(self.nbytes)
            self.nbytes = 0


MEMORY = MemoryBudget()  # the process's one budget


def body_limit(content_type: str) -> int:
    settings = get_settings()
    return settings.max_upload_bytes if content_type.startswith("multipart/") else settings.max_request_bytes


def too_large(limit: int) -> JSONResponse:
    msg = f"request body over the limit of {limit} bytes (settings OODSYNTH_MAX_REQUEST_BYTES / OODSYNTH_MAX_UPLOAD_BYTES)"
    return JSONResponse({"detail": [{"loc": ["body"], "msg": msg, "type": "too_large"}]}, status_code=413)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = body_limit(headers.get("content-type", ""))
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:  # refused before a byte is read, in the API's error shape
            await too_large(limit)(scope, receive, send)
            return
        receive = body_deadline(receive, get_settings().body_timeout_s)
        await RequestBodyLimitMiddleware(self.app, max_body_size=limit)(scope, receive, send)


def body_deadline(receive: Receive, seconds: float) -> Receive:
    """``receive`` that raises a 408 when the request body is not complete ``seconds`` after it began.

    uvicorn has no such timeout: without it, clients trickling bytes hold connections (and
    buffers) forever. Once the body is complete, messages (e.g. the disconnect) pass untimed.
    """
    deadline = asyncio.get_running_loop().time() + seconds
    body_done = False

    async def receive_in_time() -> Message:
        nonlocal body_done
        if body_done:
            return await receive()
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
        except TimeoutError:
            raise HTTPException(
                408, f"the request body did not arrive within {seconds:g} s (settings OODSYNTH_BODY_TIMEOUT_S)"
            ) from None
        body_done = message["type"] != "http.request" or not message.get("more_body", False)
        return message

    return receive_in_time


async def run_until_disconnect(request: Request, fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn`` in the threadpool; when the client disconnects first, ``oodsynth.deadline.check_deadline``
    makes it stop at its next step instead of running on for nobody (its answer is then never sent)."""
    cancelled = threading.Event()

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)
        cancelled.set()

    watcher = asyncio.create_task(watch())
    try:
        with cancel_on(cancelled):  # run_in_threadpool copies this context into the worker thread
            return await run_in_threadpool(fn, *args, **kwargs)
    finally:
        watcher.cancel()
