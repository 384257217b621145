"""API keys with scopes and tenants, configured as hashes so the server never holds a usable key.

``OODSYNTH_API_KEYS`` lists entries ``<scope>:<sha256 hex of the key>[:<tenant>]``,
separated by commas or whitespace, e.g.::

    OODSYNTH_API_KEYS="write:5e88489...:lab-a,read:a665a45...:lab-a,admin:2c26b46..."

``oodsynth api-key --scope write --tenant lab-a`` prints a fresh key (give it to
the client) and its entry (give it to the server). Scopes nest: ``admin`` may do
what ``write`` may, and ``write`` what ``read`` may. A plain SHA-256 suffices
because keys are 256-bit random tokens, not passwords: there is nothing to
brute-force, so a slow password hash would only slow every request.

A tenant owns the fits, samples, jobs and images its keys create; a key below
``admin`` reads only its own tenant's. An entry without a tenant, and every
object stored before tenants existed, is tenant ``default``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from .errors import InputError

SCOPES = ("read", "write", "admin")  # each includes the ones before it
DEFAULT_TENANT = "default"
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"  # a short slug: safe in a Redis field, a manifest row and a log
_TENANT = re.compile(TENANT_PATTERN)
_ENTRY = re.compile(r"^(read|write|admin):([0-9a-f]{64})(?::(.*))?$")


@dataclass(frozen=True)
class KeyGrant:
    """Who is calling: the key's scope, and the tenant whose objects it creates and (below admin) alone reads."""

    scope: str
    tenant: str = DEFAULT_TENANT

    @property
    def sees_all(self) -> bool:
        return self.scope == "admin"

    def sees(self, owner: str | None) -> bool:
        """May this caller read an object recorded as ``owner``'s (None: stored before tenants, so ``default``)?"""
        return self.sees_all or (owner or DEFAULT_TENANT) == self.tenant


# The caller when no keys are configured (an API for this machine only) and of the CLI: it sees everything.
LOCAL = KeyGrant("admin", DEFAULT_TENANT)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_tenant(field: str, tenant: str) -> str:
    """``tenant`` when it is a valid tenant name, else ``InputError`` naming ``field``."""
    if not _TENANT.match(tenant):
        raise InputError(
            field, f"tenant {tenant[:40]!r} is not a slug: 1-32 of a-z, 0-9, '_' and '-', first a-z or 0-9"
        )
    return tenant


def parse_api_keys(text: str | None) -> dict[str, KeyGrant]:
    """``{sha256 hex: KeyGrant}`` of an ``OODSYNTH_API_KEYS`` value; ``InputError`` naming a malformed entry."""
    keys: dict[str, KeyGrant] = {}
    for i, entry in enumerate(re.split(r"[,\s]+", (text or "").strip())):
        if not entry:
            continue
        match = _ENTRY.match(entry.lower())
        if match is None:
            shown = entry if len(entry) <= 12 else entry[:12] + "..."
            raise InputError(
                f"api_keys[{i}]",
                f"{shown!r} is not '<scope>:<sha256 hex>[:<tenant>]' with scope one of {', '.join(SCOPES)}",
            )
        scope, digest, tenant = match.groups()
        keys[digest] = KeyGrant(scope, DEFAULT_TENANT if tenant is None else check_tenant(f"api_keys[{i}]", tenant))
    return keys


def allows(granted: str, needed: str) -> bool:
    """Does a key of scope ``granted`` cover ``needed``?"""
    return SCOPES.index(granted) >= SCOPES.index(needed)


def new_api_key(scope: str, tenant: str = DEFAULT_TENANT) -> tuple[str, str]:
    """``(key, entry)``: a fresh random key and its ``<scope>:<hash>[:<tenant>]`` entry for ``OODSYNTH_API_KEYS``."""
    if scope not in SCOPES:
        raise InputError("scope", f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
    check_tenant("tenant", tenant)
    key = f"oods_{secrets.token_urlsafe(32)}"
    entry = f"{scope}:{hash_key(key)}"
    return key, entry if tenant == DEFAULT_TENANT else f"{entry}:{tenant}"
