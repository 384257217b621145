"""One rule for the names users give things (datasets, fits, classes), shared by the API, the bank and the store.

A name becomes a folder or an object-key segment in the result store and a
Redis key, and it is echoed in logs and terminals. So it must be one safe
path segment and must read the same everywhere: NFC-normalised (a composed
and a decomposed "é" are one name), printable (no newlines, control
characters or bidi overrides that reorder what a terminal shows), free of
compatibility forms and of characters that look like a dot or a slash
(fullwidth "．．" must not pass for ".."), short, never ``.``/``..``, no path
separators.
"""

from __future__ import annotations

import unicodedata

from .errors import InputError

MAX_NAME_LENGTH = 128  # bytes of the NFC form's UTF-8: one path component (<= 255) with room to spare
MAX_COMPONENT_BYTES = 255  # what a file system (ext4, APFS, NTFS) or an S3 key segment holds in one component
# Names the result store gives its own entries beside the class folders of a dataset (store/results.py).
RESERVED_NAMES = frozenset({"manifest", "manifest.jsonl"})

# Characters that read as '.', '/' or '\' but are their own code points, so NFKC keeps them (the
# compatibility forms, e.g. fullwidth U+FF0E/U+FF0F or the leader dots U+2024/U+2025, fail the NFKC test).
CONFUSABLE_SEPARATORS = frozenset(
    "\u2215\u2044\u29f8\u29f5\u29f9\u2216"  # division/fraction slashes, big solidus, reverse solidus operators
    "\u3002\u0589\u06d4\u0701\u0702\ua4f8\u2e31\u2e33\u2027\u00b7\u30fb"  # full stops and dots of other scripts
)


def normalize_name(value: str) -> str:
    """The name's NFC form: the one spelling under which it is stored and looked up."""
    return unicodedata.normalize("NFC", value)


def _refused_character(c: str) -> str | None:
    if not c.isprintable():
        return "a control or formatting character"
    if c in CONFUSABLE_SEPARATORS:
        return "a character that looks like a dot or a slash"
    if unicodedata.normalize("NFKC", c) != c:
        return "a compatibility form (fullwidth, small or ligature) of another character"
    return None


def validate_name(field: str, value: object) -> str:
    """Return the NFC form of ``value`` when it is a valid name, else raise ``InputError(field, why)``.

    ``str.isprintable`` is the printable test: it is False for control
    characters (Cc), format characters (Cf: the bidi overrides U+202A-U+202E
    and U+2066-U+2069, zero-width joiners), separators other than the ASCII
    space, and unassigned code points.
    """
    if not isinstance(value, str) or not value.strip():
        raise InputError(field, "must be a non-empty name")
    if len(value) > MAX_NAME_LENGTH:  # every character is at least one byte: no need to encode a huge string
        raise InputError(field, f"must be at most {MAX_NAME_LENGTH} bytes of UTF-8 (got {len(value)} characters)")
    value = normalize_name(value)
    for c in value:
        why = _refused_character(c)
        if why:
            raise InputError(field, f"must be printable plain text: it contains U+{ord(c):04X} ({why})")
    size = len(value.encode("utf-8"))
    if size > MAX_NAME_LENGTH:
        raise InputError(field, f"must be at most {MAX_NAME_LENGTH} bytes of UTF-8 (got {size} bytes)")
    if value.casefold() in RESERVED_NAMES:
        raise InputError(field, f"{value!r} is reserved: the result store names its own files so")
    if "/" in value or "\\" in value:
        raise InputError(field, f"{value!r} must be one name, without path separators ('/' or '\\')")
    if value.startswith("."):  # covers '.' and '..', and hidden folders
        raise InputError(field, f"{value!r} must not start with '.'")
    if value != value.strip():
        raise InputError(field, f"{value!r} must not start or end with spaces")
    return value


def component_fits(segment: str) -> bool:
    """Whether ``segment`` can be one path component: at most 255 bytes of UTF-8 (the file system's limit)."""
    return len(segment) <= MAX_COMPONENT_BYTES and len(segment.encode("utf-8", "surrogatepass")) <= MAX_COMPONENT_BYTES


def is_valid_name(value: object) -> bool:
    """``validate_name`` as a test, for lookups: an invalid name names nothing."""
    try:
        validate_name("name", value)
    except InputError:
        return False
    return True
