"""Scoped API keys on the routes: ``Authorization: Bearer <key>`` (FastAPI's ``HTTPBearer``).

Each route declares the scope it needs (``dependencies=[READ]``, ``[WRITE]``,
``[ADMIN]``); ``/healthz`` declares none. Keys come from settings
(``OODSYNTH_API_KEYS``, hashes only, see ``oodsynth.api_keys``). With no keys
configured every route is open and ``oodsynth serve`` binds to 127.0.0.1
only. No key: 401 with ``WWW-Authenticate: Bearer``; a key whose scope does
not cover the route: 403. Both use the API's one error shape.
"""

from __future__ import annotations

from functools import lru_cache

from fastapi import Depends, Security
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


def require(scope: str):
    """A route dependency that lets through keys whose scope covers ``scope`` (everyone when no keys are set)."""

    def check(
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),
        settings: Settings = Depends(get_settings_dep),
    ) -> None:
        keys = configured_keys(settings.api_keys)
        if not keys:
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
