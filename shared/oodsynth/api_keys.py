"""API keys with scopes, configured as hashes so the server never holds a usable key.

``OODSYNTH_API_KEYS`` lists entries ``<scope>:<sha256 hex of the key>``,
separated by commas or whitespace, e.g.::

    OODSYNTH_API_KEYS="write:5e88489...,read:a665a45..."

``oodsynth api-key --scope write`` prints a fresh key (give it to the client)
and its entry (give it to the server). Scopes nest: ``admin`` may do what
``write`` may, and ``write`` what ``read`` may. A plain SHA-256 suffices
because keys are 256-bit random tokens, not passwords: there is nothing to
brute-force, so a slow password hash would only slow every request.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from .errors import InputError

SCOPES = ("read", "write", "admin")  # each includes the ones before it
_ENTRY = re.compile(r"^(read|write|admin):([0-9a-f]{64})$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_api_keys(text: str | None) -> dict[str, str]:
    """``{sha256 hex: scope}`` of an ``OODSYNTH_API_KEYS`` value; ``InputError`` naming a malformed entry."""
    keys: dict[str, str] = {}
    for i, entry in enumerate(re.split(r"[,\s]+", (text or "").strip())):
        if not entry:
            continue
        match = _ENTRY.match(entry.lower())
        if match is None:
            shown = entry if len(entry) <= 12 else entry[:12] + "..."
            raise InputError(
                f"api_keys[{i}]", f"{shown!r} is not '<scope>:<sha256 hex>' with scope one of {', '.join(SCOPES)}"
            )
        keys[match.group(2)] = match.group(1)
    return keys


def allows(granted: str, needed: str) -> bool:
    """Does a key of scope ``granted`` cover ``needed``?"""
    return SCOPES.index(granted) >= SCOPES.index(needed)


def new_api_key(scope: str) -> tuple[str, str]:
    """``(key, entry)``: a fresh random key and its ``<scope>:<hash>`` entry for ``OODSYNTH_API_KEYS``."""
    if scope not in SCOPES:
        raise InputError("scope", f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
    key = f"oods_{secrets.token_urlsafe(32)}"
    return key, f"{scope}:{hash_key(key)}"
