"""What an answer or a log line may say: one line, no traceback, no filesystem paths, no passwords.

Tracebacks and install, socket or model paths help an attacker more than a
user; the full text goes to the logs (and stays in RQ's failed registry for
operators), answers get ``failure_line``/``redact_paths``.
"""

from __future__ import annotations

import re

# An absolute POSIX path of two or more segments (/home/u/x.npz, /tmp/redis.sock), also inside
# unix:// URLs; not a URL's host part (s3://bucket/key keeps its bucket: '//' is not matched).
_PATH = re.compile(r"(?<![\w/:])/(?:[\w.@+\-]+/)+[\w.@+\-]*|unix://\S+")
MAX_LINE = 500


def redact_paths(text: str) -> str:
    return _PATH.sub("<path>", text)


def failure_line(exc_string: str | None) -> str | None:
    """The last line of a traceback (``Type: message``), paths redacted, at most 500 characters."""
    if not exc_string:
        return None
    lines = [line.strip() for line in exc_string.strip().splitlines() if line.strip()]
    line = redact_paths(lines[-1]) if lines else ""
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."


# The user part runs to the last '@' of the URL's token: a password may hold '@', '/' or ':' (a parser that
# stops at the first would show the rest of the secret).
_URL_PASSWORD = re.compile(r"(?<=://)([^/@:\s]*):\S*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with its password shown as ``***``: in the user part (``redis://:secret@host``) or the query
    (``unix:///run/redis.sock?password=secret``)."""
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", url))
