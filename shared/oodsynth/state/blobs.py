"""How the registry lays a blob out in a Redis hash: split into fields of at most ``CHUNK_BYTES`` (Redis refuses
values over 512 MB), read back in at most two round trips; and the strict JSON of the summaries stored beside them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import redis
from redis.typing import EncodableT, FieldT

# Redis refuses values over 512 MB; stay well below it per hash field.
CHUNK_BYTES = 256 * 1024 * 1024


def _json_default(value: Any) -> Any:
    """Sampler params and summaries may hold numpy scalars/arrays; JSON needs plain types."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json(value: Any) -> str:
    """Strict JSON (no NaN) of summaries and sampler parameters that may hold numpy values."""
    return json.dumps(value, default=_json_default, allow_nan=False)


def as_bytes(reply: object) -> bytes:
    """A reply of the registry's connections, which never decode responses (``decode_responses=False``): redis-py
    types each as ``bytes | str`` (or a union with the reply shapes of other options), they are bytes."""
    assert isinstance(reply, bytes), f"the registry's Redis replies are bytes, got {type(reply).__name__}"
    return reply


def hash_mapping(fields: Mapping[str, bytes]) -> Mapping[FieldT, EncodableT]:
    """``fields`` as ``hset(mapping=...)`` takes them: its key type is invariant, so ``str`` keys need the cast."""
    return cast("Mapping[FieldT, EncodableT]", fields)


def chunk_fields(part: str, data: bytes) -> dict[str, bytes]:
    """``data`` as hash fields ``<part>:0``, ``<part>:1``, ... of at most ``CHUNK_BYTES`` each, and ``<part>:n``."""
    chunks = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]
    fields = {f"{part}:{i}": c for i, c in enumerate(chunks)}
    fields[f"{part}:n"] = str(len(chunks)).encode()
    return fields


def read_chunks(client: redis.Redis, key: str, part: str) -> bytes | None:
    """The chunks of ``part`` joined; None when the key or part is missing (or was replaced between reads).

    The count and the first chunk come in one round trip; the rest come in a second.
    """
    found = read_parts(client, key, [part])
    return None if found is None else found[0][part]


def read_parts(
    client: redis.Redis, key: str, parts: Sequence[str], fields: Sequence[str] = ()
) -> tuple[dict[str, bytes], dict[str, bytes | None]] | None:
    """``(parts, fields)``: each of ``parts`` joined from its chunks, and each plain hash field of ``fields`` (None
    when absent).

    Every count, first chunk and field comes in one ``HMGET``, so values of one chunk each (a sample of up to
    ``CHUNK_BYTES``, which every ``/generate`` reads) cost one round trip; further chunks come in a second.
    None when a part is missing or was replaced between the two reads.
    """
    names = [*fields, *(f"{part}:{i}" for part in parts for i in ("n", 0))]
    values = {name: None if v is None else as_bytes(v) for name, v in zip(names, client.hmget(key, names))}
    counts: dict[str, int] = {}
    chunks: dict[str, list[bytes]] = {}
    for part in parts:
        count, first = values[f"{part}:n"], values[f"{part}:0"]
        if count is None or first is None:
            return None
        counts[part], chunks[part] = int(count), [first]
    rest_names = [f"{part}:{i}" for part in parts for i in range(1, counts[part])]
    if rest_names:
        rest_parts = [part for part in parts for _ in range(1, counts[part])]
        for part, chunk in zip(rest_parts, client.hmget(key, rest_names)):
            if chunk is None:
                return None  # replaced or expired between the two reads
            chunks[part].append(as_bytes(chunk))
    return {part: b"".join(c) for part, c in chunks.items()}, {name: values[name] for name in fields}
