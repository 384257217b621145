"""Scoped API keys on the routes: ``Authorization: Bearer <key>`` (FastAPI's ``HTTPBearer``).

Each route declares the scope it needs (``dependencies=[READ]``, ``[WRITE]``,
``[ADMIN]``); ``/healthz`` declares none. Keys come from settings
(``OODSYNTH_API_KEYS``, hashes only, see ``oodsynth.api_keys``). With no keys
configured every route is open to this machine only: ``oodsynth serve`` binds
to 127.0.0.1, and ``check_local`` refuses foreign peers and Host names (DNS
rebinding) and cross-site requests on mutating routes (CSRF). No key: 401 with ``WWW-Authenticate: Bearer``; a key whose scope does
not cover the route: 403. Both use the API's one error shape.

The dependency's value is the caller, a ``KeyGrant`` (scope and tenant); a route that reads or creates owned
objects takes it as a parameter too (``caller: KeyGrant = READ``): FastAPI runs one dependency once per request.
With no keys configured the caller is ``LOCAL``, admin of tenant ``default``.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from urllib.parse import urlsplit

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from oodsynth.api_keys import LOCAL, KeyGrant, allows, hash_key, parse_api_keys
from oodsynth.config import Settings
from oodsynth.errors import Forbidden, Unauthorized

from .state import get_settings_dep

# auto_error=False: a missing header is answered here, as 401 in the API's error shape.
bearer = HTTPBearer(auto_error=False, description="An API key from OODSYNTH_API_KEYS (scope read, write or admin).")


@lru_cache(maxsize=8)
def configured_keys(text: str) -> dict[str, KeyGrant]:
    return parse_api_keys(text)


# Names a keyless (local-only) API answers to. "testserver" is Starlette's TestClient host: not a
# name public DNS can point a browser at, so it opens no rebinding path.
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "testserver"})
# The TestClient's peer "address"; an ASGI server always gives a real IP (or none, on a unix socket).
LOCAL_PEERS = frozenset({"testclient"})
# Content types a cross-site HTML form (or a no-cors fetch) can send without a CORS preflight.
SIMPLE_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
CSRF_HEADER = "x-requested-with"  # a header no cross-site form can add; the project's client sends it


def _hostname(netloc: str) -> str:
    return (urlsplit(f"//{netloc}").hostname or "").lower()


def _local_peer(request: Request) -> bool:
    if request.client is None or request.client.host in LOCAL_PEERS:
        return True  # a unix socket, or the test client
    try:
        address = ipaddress.ip_address(request.client.host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return (mapped or address).is_loopback


def check_local(request: Request, *, mutating: bool) -> None:
    """Without keys, only this machine may call.

    The peer address must be a loopback one (a Host header is the client's to choose), the Host a
    loopback name (DNS rebinding). A state-changing request must not be cross-site, whatever the
    browser sends: an ``Origin`` must be this server's own (scheme, host and port), a ``Sec-Fetch-Site``
    must say same-origin, and a browser's request without an ``Origin`` that a plain form could have
    sent (form, multipart or text body) must carry ``X-Requested-With``, which no form can add.
    """
    if not _local_peer(request):
        raise Forbidden("host", "no API keys are configured, so only this machine's own address is served")
    host = _hostname(request.headers.get("host", ""))
    if host not in LOCAL_HOSTS:
        raise Forbidden("host", f"no API keys are configured, so only local host names are served, not {host!r}")
    if not mutating:
        return
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.headers.get('host', '').lower()}"
    if origin is not None and origin.lower() != own:
        raise Forbidden("origin", "no API keys are configured: cross-origin requests may not change anything")
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise Forbidden("origin", f"no API keys are configured: a {site} request may not change anything")
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    from_browser = "mozilla/" in request.headers.get("user-agent", "").lower()
    if origin is None and from_browser and media in SIMPLE_TYPES and CSRF_HEADER not in request.headers:
        raise Forbidden(
            "x-requested-with",
            "no API keys are configured: a browser's form-like request must send X-Requested-With",
        )


def require(scope: str):
    """A route dependency that lets through keys whose scope covers ``scope`` (everyone when no keys are set),
    and yields the caller."""

    async def check(  # async: a plain def would cost a thread hop on every request (state.py)
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),
        settings: Settings = Depends(get_settings_dep),
    ) -> KeyGrant:
        keys = configured_keys(settings.api_keys)
        if not keys:
            check_local(request, mutating=scope != "read")
            return LOCAL
        if credentials is None:
            raise Unauthorized("authorization", "send an API key as 'Authorization: Bearer <key>'")
        granted = keys.get(hash_key(credentials.credentials))
        if granted is None:
            raise Unauthorized("authorization", "unknown API key")
        if not allows(granted.scope, scope):
            raise Forbidden("authorization", f"this key has scope {granted.scope!r}; the route needs {scope!r}")
        return granted

    return Depends(check)


READ, WRITE, ADMIN = require("read"), require("write"), require("admin")
