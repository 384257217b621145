"""``NAME=VALUE`` assignments from the command line (``--virtual-param``, ``--param``, the lab's ``--set``).

One reading for every surface: VALUE is JSON where it parses (numbers, booleans, objects), else plain text.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import InputError


def read_value(text: str) -> Any:
    """A command-line VALUE: its JSON value where it is JSON (``64``, ``true``, ``{"k": 1}``), else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def split_assignment(spec: str, field: str, form: str) -> tuple[str, Any]:
    """``"k=5"`` -> ``("k", 5)``; a spec without ``=`` or without a name is an ``InputError`` on ``field``
    saying it is not ``form`` (e.g. ``"NAME=VALUE (e.g. queue_size=64)"``)."""
    name, sep, value = spec.partition("=")
    if not (sep and name.strip()):
        raise InputError(field, f"{spec!r} is not {form}")
    return name.strip(), read_value(value)
