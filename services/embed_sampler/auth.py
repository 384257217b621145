"""Scoped API keys on the routes: ``Authorization: Bearer <key>`` (FastAPI's ``HTTPBearer``).

Each route declares the scope it needs (``dependencies=[READ]``, ``[WRITE]``,
``[ADMIN]``); ``/healthz`` declares none. Keys come from settings
(``OODSYNTH_API_KEYS``, hashes only, see ``oodsynth.api_keys``). With no keys
configured every route is open to this machine only: ``oodsynth serve`` binds
to 127.0.0.1, and ``check_local`` refuses foreign Host names (DNS rebinding) and
cross-site Origins on mutating routes (CSRF). No key: 401 with ``WWW-Authenticate: Bearer``; a key whose scope does
not cover the route: 403. Both use the API's one error shape.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlsplit

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from oodsynth.api_keys import allows, hash_key, parse_api_keys
from oodsynth.config import Settings
from oodsynth.errors import Forbidden, Unauthorized

from .state import get_settings_dep

# auto_error=False: a missing header is answered here, as 401 in the API's error shape.
bearer = HTTPBearer(auto_error=False, description="An API key from OODSYNTH_API_KEYS (scope read, write or admin).")


@lru_cache(maxsize=8)
def configured_keys(text: str) -> dict[str, str]:
    return parse_api_keys(text)


# Names a keyless (local-only) API answers to. "testserver" is Starlette's TestClient host: not a
# name public DNS can point a browser at, so it opens no rebinding path.
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "testserver"})


def _hostname(netloc: str) -> str:
    return (urlsplit(f"//{netloc}").hostname or "").lower()


def check_local(request: Request, *, mutating: bool) -> None:
    """Without keys, only this machine may call: the Host must be a loopback name (DNS rebinding),
    and a browser's Origin on a mutating request must be one too (cross-site form posts)."""
    host = _hostname(request.headers.get("host", ""))
    if host not in LOCAL_HOSTS:
        raise Forbidden("host", f"no API keys are configured, so only local host names are served, not {host!r}")
    origin = request.headers.get("origin")
    if mutating and origin is not None and _hostname(urlsplit(origin).netloc) not in LOCAL_HOSTS:
        raise Forbidden("origin", "no API keys are configured: cross-site requests may not change anything")


def require(scope: str):
    """A route dependency that lets through keys whose scope covers ``scope`` (everyone when no keys are set)."""

    async def check(  # async: a plain def would cost a thread hop on every request (state.py)
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),
        settings: Settings = Depends(get_settings_dep),
    ) -> None:
        keys = configured_keys(settings.api_keys)
        if not keys:
            check_local(request, mutating=scope != "read")
            return
        if credentials is None:
            raise Unauthorized("authorization", "send an API key as 'Authorization: Bearer <key>'")
        granted = keys.get(hash_key(credentials.credentials))
        if granted is None:
            raise Unauthorized("authorization", "unknown API key")
        if not allows(granted, scope):
            raise Forbidden("authorization", f"this key has scope {granted!r}; the route needs {scope!r}")

    return Depends(check)


READ, WRITE, ADMIN = require("read"), require("write"), require("admin")
