"""The library's typed errors: what went wrong, and which input field is to blame.

Every surface maps these the same way, so a bad request reads the same
through the API, the CLI and the Python client:

========== ======== ===========================================
error      HTTP     CLI (one line ``error: <field>: <message>``)
========== ======== ===========================================
InputError 422      exit 2
NoOODSets  422      exit 2 (an InputError on ``ood``)
NotFound   404      exit 2
Conflict   409      exit 2
Gone       410      exit 2
Unavailable 503     exit 1
Unauthorized 401    exit 2
Forbidden  403      exit 2
TooBusy    429      exit 1
TooLarge   413      exit 2
========== ======== ===========================================

``field`` is written the way a user names it: ``n_per_class``,
``classes[2]``, ``params.sigma``, ``file.features``. The API turns it into
``detail[].loc`` (``["body", "classes", 2]``); the client turns ``loc`` back
into the same string. Raise them anywhere in the library::

    raise InputError("n_per_class", f"{n} is outside [1, {cap}]")
    raise NotFound("fit", f"no fit named {name!r}")

``InputError`` is a ``ValueError`` and ``NotFound`` a ``KeyError``, so code
that catches those still works.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

Loc = Sequence[str | int]
_LOC_TOKEN = re.compile(r"[^.\[\]]+|\[\d+\]")
REQUEST_SECTIONS = ("body", "path", "query", "header")


def split_field(field: str | None) -> list[str | int]:
    """``"classes[2]"`` -> ``["classes", 2]``; ``"params.sigma"`` -> ``["params", "sigma"]``."""
    return [int(t[1:-1]) if t.startswith("[") else t for t in _LOC_TOKEN.findall(field or "")]


def join_loc(loc: Iterable[str | int]) -> str | None:
    """``["body", "classes", 0]`` -> ``"classes[0]"``: the inverse of ``split_field`` (request section dropped)."""
    out = ""
    for part in loc:
        if part in REQUEST_SECTIONS and not out:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


class OodsynthError(Exception):
    """Base of every error the library raises on purpose; ``field`` names the input to change."""

    status = 500  # the HTTP status the API answers with
    type = "error"  # the ``detail[].type`` the API answers with
    exit_code = 1  # the CLI's exit status
    section: str | None = None  # the request section the API names for ``field``; None: the API works it out
    detail: object = None  # on an error the client rebuilt from an answer: that answer's ``detail``

    def __init__(self, field: str | None, message: str, *, errors: Sequence[tuple[str | None, str]] | None = None):
        super().__init__(field, message)
        self.field = field
        self.message = message
        # Every problem found, first one first (a pydantic model can report several at once).
        self.errors: list[tuple[str | None, str]] = list(errors) if errors else [(field, message)]

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    def __reduce__(self):  # picklable across processes despite the keyword-only argument
        return _rebuild, (type(self), self.field, self.message, self.errors)

    @classmethod
    def from_pydantic(cls, exc, prefix: str | None = None) -> OodsynthError:
        """One error from a ``pydantic.ValidationError``, fields rooted under ``prefix`` (e.g. ``params``)."""
        errors = []
        for e in exc.errors(include_url=False):
            field = join_loc([*split_field(prefix), *e["loc"]])
            errors.append((field, pydantic_message(e)))
        return cls(*(errors[0] if errors else (prefix, str(exc))), errors=errors)


def pydantic_message(error: dict) -> str:
    """A pydantic error's message; a validator's own ValueError keeps its text, without "Value error, "."""
    raised = (error.get("ctx") or {}).get("error")
    return str(raised) if isinstance(raised, Exception) else str(error["msg"])


def _rebuild(cls, field, message, errors):
    return cls(field, message, errors=errors)


class InputError(OodsynthError, ValueError):
    """The caller passed a bad value (HTTP 422, CLI exit 2)."""

    status = 422
    type = "value_error"
    exit_code = 2


class NoOODSets(InputError):
    """An evaluation was asked for without an OOD set, or with an empty one (HTTP 422, CLI exit 2; field ``ood``)."""

    def __init__(self, message: str = "give at least one OOD set (--ood)", *, errors=None):
        super().__init__("ood", message, errors=errors)

    def __reduce__(self):  # picklable: the field is fixed
        return NoOODSets, (self.message,)


class NotFound(OodsynthError, KeyError):
    """A named thing (fit, sample, job) does not exist or has expired (HTTP 404, CLI exit 2)."""

    status = 404
    type = "not_found"
    exit_code = 2


class Conflict(OodsynthError):
    """The request clashes with what exists, e.g. a fit name taken without ``replace`` (HTTP 409, CLI exit 2)."""

    status = 409
    type = "conflict"
    exit_code = 2


class Gone(OodsynthError):
    """A named thing existed but was removed on purpose before it expired, e.g. a sample evicted to keep its tenant
    within its byte budget (HTTP 410, CLI exit 2): unlike a 404, the name was right; the message says why."""

    status = 410
    type = "gone"
    exit_code = 2


class Unavailable(OodsynthError, RuntimeError):
    """A service the request needs is down or unreachable: Redis, the API, a download (HTTP 503, CLI exit 1)."""

    status = 503
    type = "service_unavailable"
    exit_code = 1


class Unauthorized(OodsynthError):
    """No API key, or an unknown one (HTTP 401, CLI exit 2); ``field`` is the ``authorization`` header."""

    status = 401
    type = "unauthorized"
    exit_code = 2
    section = "header"  # where the API says the field is
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(OodsynthError):
    """The API key's scope does not cover the request (HTTP 403, CLI exit 2)."""

    status = 403
    type = "forbidden"
    exit_code = 2
    section = "header"


class TooBusy(OodsynthError):
    """Every slot for expensive work is taken; retry after ``retry_after`` seconds (HTTP 429, CLI exit 1)."""

    status = 429
    type = "too_busy"
    exit_code = 1

    def __init__(self, field: str | None, message: str, *, retry_after: int = 5, errors=None):
        super().__init__(field, message, errors=errors)
        self.headers = {"Retry-After": str(retry_after)}


class TooLarge(OodsynthError):
    """An input is over a configured size limit, judged from its declared size before it is read or inflated
    (HTTP 413, CLI exit 2); the message names the limit and its setting."""

    status = 413
    type = "too_large"
    exit_code = 2


BY_STATUS: dict[int, type[OodsynthError]] = {
    cls.status: cls
    for cls in (InputError, NotFound, Conflict, Gone, Unavailable, Unauthorized, Forbidden, TooBusy, TooLarge)
}

__all__ = [
    "BY_STATUS",
    "Conflict",
    "Forbidden",
    "Gone",
    "InputError",
    "NoOODSets",
    "NotFound",
    "OodsynthError",
    "TooBusy",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "join_loc",
    "pydantic_message",
    "split_field",
]
