"""One rule for the names users give things (datasets, fits), shared by the API and the store.

A name becomes a folder or an object-key segment in the result store and a
Redis key, and it is echoed in logs and terminals. So it must be one safe
path segment and must read the same everywhere: printable (no newlines,
control characters or bidi overrides that reorder what a terminal shows),
short, never ``.``/``..``, no path separators.
"""

from __future__ import annotations

from .errors import InputError

MAX_NAME_LENGTH = 128


def validate_name(field: str, value: object) -> str:
    """Return ``value`` when it is a valid name, else raise ``InputError(field, why)``.

    ``str.isprintable`` is the printable test: it is False for control
    characters (Cc), format characters (Cf: the bidi overrides U+202A-U+202E
    and U+2066-U+2069, zero-width joiners), separators other than the ASCII
    space, and unassigned code points.
    """
    if not isinstance(value, str) or not value.strip():
        raise InputError(field, "must be a non-empty name")
    if len(value) > MAX_NAME_LENGTH:
        raise InputError(field, f"must be at most {MAX_NAME_LENGTH} characters (got {len(value)})")
    if not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        raise InputError(field, f"must be printable: it contains U+{ord(bad):04X} (a control or formatting character)")
    if "/" in value or "\\" in value:
        raise InputError(field, f"{value!r} must be one name, without path separators ('/' or '\\')")
    if value.startswith("."):  # covers '.' and '..', and hidden folders
        raise InputError(field, f"{value!r} must not start with '.'")
    if value != value.strip():
        raise InputError(field, f"{value!r} must not start or end with spaces")
    return value


def is_valid_name(value: object) -> bool:
    """``validate_name`` as a test, for lookups: an invalid name names nothing."""
    try:
        validate_name("name", value)
    except InputError:
        return False
    return True
