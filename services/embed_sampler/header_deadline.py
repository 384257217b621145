"""uvicorn's HTTP protocols with a deadline on request headers: no slow-header (slowloris) clients.

uvicorn times out idle kept-alive connections, and ``limits.body_deadline``
times out slow bodies, but nothing bounds the time between a connection's
first byte (or its opening) and the end of a request's headers: a client that
opens connections and trickles header bytes holds each one, and its buffers,
forever. uvicorn has no setting for this, so these subclasses add one: a timer
armed when a connection opens (and when the next request on a kept-alive
connection starts to arrive) that closes the connection unless the request's
headers are complete within ``OODSYNTH_HEADER_TIMEOUT_S``. The request itself
then runs untimed here (its body has its own deadline).

Written as a mixin over both of uvicorn's HTTP protocols (h11, and httptools
when it is installed) because the hook points, ``connection_made``,
``data_received`` and the current ``cycle``, are the same in both.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.h11_impl import H11Protocol

from oodsynth.config import get_settings

logger = logging.getLogger("uvicorn.error")


class HeaderDeadlineMixin:
    """Close a connection whose request headers are not complete within the settings' header timeout."""

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]  # on the uvicorn protocol this is mixed into (the mixin's base is object)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]  # on the uvicorn protocol this is mixed into
        if self._request_in_progress():
            self._disarm_header_deadline()
        elif self._header_timer is None:  # the next request on a kept-alive connection has begun to arrive
            self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)  # type: ignore[misc]  # on the uvicorn protocol this is mixed into

    def _request_in_progress(self) -> bool:
        """The current request's headers are in (uvicorn made its cycle) and its response is not done."""
        cycle = self.cycle  # type: ignore[attr-defined]  # set by the uvicorn protocol this is mixed into
        return cycle is not None and not cycle.response_complete

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        seconds = get_settings().header_timeout_s
        loop = self.loop  # type: ignore[attr-defined]  # set by the uvicorn protocol this is mixed into
        self._header_timer = loop.call_later(seconds, self._header_deadline_passed, seconds)

    def _disarm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline_passed(self, seconds: float) -> None:
        self._header_timer = None
        transport = self.transport  # type: ignore[attr-defined]  # set by the uvicorn protocol this is mixed into
        if self._request_in_progress() or transport.is_closing():
            return
        logger.info(
            "closing a connection whose request headers did not arrive within %g s "
            "(settings OODSYNTH_HEADER_TIMEOUT_S)",
            seconds,
        )
        transport.close()


class HeaderDeadlineH11Protocol(HeaderDeadlineMixin, H11Protocol):
    pass


_with_httptools: type[asyncio.Protocol] | None = None
try:  # httptools is an optional extra of uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:
    pass
else:

    class HeaderDeadlineHttpToolsProtocol(HeaderDeadlineMixin, HttpToolsProtocol):  # module level: workers pickle it
        pass

    _with_httptools = HeaderDeadlineHttpToolsProtocol


def http_protocol() -> type[asyncio.Protocol]:
    """The protocol class for ``uvicorn.run(http=...)``: httptools' when installed (uvicorn's own "auto"
    choice), else h11's, each with the header deadline."""
    return HeaderDeadlineH11Protocol if _with_httptools is None else _with_httptools
