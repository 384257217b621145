"""Every field of an RQ job hash checked before RQ acts on it: ``CheckedJob``, the job class of the worker and API.

RQ trusts the hash: ``timeout`` goes into EXPIRE (10^20 fails it, and the worker
quits with the job left in the intermediate queue), TTLs into EXPIRE and ZADD,
retry intervals into a datetime (overflow), ``data`` and ``exc_info`` through
``zlib.decompress`` with no bound (a 1 MB bomb is gigabytes), dates and flags
through parsers that raise. Whoever can write to Redis controls all of it.

``CheckedJob.restore`` checks each field against ``CHECKS`` first. A field that
fails is left out (RQ's default takes its place, so RQ's own bookkeeping is
safe) and named in ``job.hash_problems``; the worker fails such a job into the
failed registry with those reasons and never runs it
(``worker.allowlist.refusal_reason``). Compressed payloads are inflated only up
to ``MAX_JOB_BYTES``; nothing past it is ever held.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import zlib
from collections.abc import Callable
from typing import Any

from rq.job import JOB_ID_PATTERN, Job, JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import parse_timeout, str_to_date

from .payloads import MAX_JOB_BYTES
from .registry_read import QUEUE_NAME

log = logging.getLogger(__name__)

MAX_TIMEOUT_S = 7 * 24 * 3600  # a job may run a week; far past the settings' default hour
MAX_TTL_S = 366 * 24 * 3600  # results and failures are kept at most a year (RQ's -1: forever)
MAX_RETRIES = 100
MAX_INTERVAL_S = 24 * 3600  # one retry interval
MAX_LIST = 100  # retry intervals, dependencies
MAX_META_BYTES = 64 * 1024  # the worker writes {dataset, progress}: a few hundred bytes
MAX_TEXT_BYTES = 4096  # description, names, keys
MAX_EXC_INFO_BYTES = 1 * 2**20
MAX_CALLBACK_TIMEOUT_S = 3600
PLACEHOLDER = b"<unchecked>"  # what RQ's restore sees in place of the payload: not zlib, so never inflated

Check = Callable[[bytes], object]  # raises ValueError (or anything) with the reason when the value is bad


def inflate_bounded(raw: bytes, limit: int) -> bytes:
    """RQ's reading of a payload (zlib-inflated when it is zlib, else as it is), never inflating past ``limit``."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error:
        return raw  # not zlib: the bytes as they are, as RQ reads them
    if len(out) > limit or inflater.unconsumed_tail:
        raise ValueError(f"inflates past the cap of {limit} bytes")
    return out if inflater.eof else raw  # a truncated stream is not zlib to RQ either


def _int_in(lo: int, hi: int) -> Check:
    def check(raw: bytes) -> int:
        value = int(raw)
        if not lo <= value <= hi:
            raise ValueError(f"{value if abs(value) < 10**12 else f'{value:.3g}'} is outside [{lo}, {hi}]")
        return value

    return check


def _timeout(raw: bytes) -> None:
    value = parse_timeout(raw.decode("ascii"))
    if value is None or not 1 <= value <= MAX_TIMEOUT_S:
        raise ValueError(f"{float(value or 0):.3g} s is outside [1, {MAX_TIMEOUT_S}]")


def _json_list(item: Callable[[Any], object]) -> Check:
    def check(raw: bytes) -> None:
        values = json.loads(raw)
        if not isinstance(values, list) or len(values) > MAX_LIST:
            raise ValueError(f"expected a list of at most {MAX_LIST} entries")
        for v in values:
            item(v)

    return check


def _interval(v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and 0 <= v <= MAX_INTERVAL_S):
        raise ValueError(f"an interval must be a number of seconds in [0, {MAX_INTERVAL_S}]")


def _job_id(v: Any) -> None:
    text = v.decode() if isinstance(v, bytes) else v
    if not isinstance(text, str) or len(text) > 128 or not JOB_ID_PATTERN.fullmatch(text):
        raise ValueError("not a job id")


def _text(raw: bytes) -> None:
    if len(raw) > MAX_TEXT_BYTES:
        raise ValueError(f"longer than {MAX_TEXT_BYTES} bytes")
    raw.decode("utf-8")


def _meta(raw: bytes) -> None:
    if len(raw) > MAX_META_BYTES:
        raise ValueError(f"longer than {MAX_META_BYTES} bytes")
    if not isinstance(JSONSerializer.loads(raw), dict):
        raise ValueError("not a JSON object")


def _date(raw: bytes) -> None:
    if len(raw) > 64:
        raise ValueError("not a date")
    str_to_date(raw)


def _queue(raw: bytes) -> None:
    if not QUEUE_NAME.fullmatch(raw.decode("utf-8")):
        raise ValueError("not a queue name")


def _exc_info(raw: bytes) -> None:
    inflate_bounded(raw, MAX_EXC_INFO_BYTES)


_FLAG = _int_in(0, 1)


def _ttl(raw: bytes) -> None:
    """-1 (RQ's forever) or 1 s to a year: 0 would delete a failed job at once, with its reason."""
    if int(raw) != -1:
        _int_in(1, MAX_TTL_S)(raw)


def _never(what: str) -> Check:
    """A field oodsynth never writes: RQ acts on it (a group fetched on cleanup, a rate limit that holds the
    job, a repeat that runs it again), so a job that carries one is not ours."""

    def check(raw: bytes) -> None:
        raise ValueError(f"oodsynth jobs have no {what}")

    return check


_TTL = _ttl
_COUNT = _int_in(0, MAX_RETRIES)
_CALLBACK_TIMEOUT = _int_in(1, MAX_CALLBACK_TIMEOUT_S)

CHECKS: dict[str, Check] = {
    "timeout": _timeout,
    "result_ttl": _TTL,
    "failure_ttl": _TTL,
    "ttl": _TTL,
    "number_of_retries": _COUNT,
    "retries_left": _COUNT,
    "retry_intervals": _json_list(_interval),
    "repeats_left": _never("repeats"),
    "repeat_intervals": _never("repeats"),
    "dependency_ids": _json_list(_job_id),
    "dependency_id": _job_id,
    "meta": _meta,
    "status": lambda raw: JobStatus(raw.decode("ascii")),
    **{name: _date for name in ("created_at", "enqueued_at", "started_at", "ended_at", "last_heartbeat")},
    "origin": _queue,
    **{name: _text for name in ("worker_name", "description", "webhooks")},
    "group_id": _never("group"),
    "rate_limit_key": _never("rate limit"),
    "rate_limit_concurrency": _never("rate limit"),
    **{f"{kind}_callback_name": _text for kind in ("success", "failure", "stopped")},
    **{f"{kind}_callback_timeout": _CALLBACK_TIMEOUT for kind in ("success", "failure", "stopped")},
    **{name: _FLAG for name in ("allow_dependency_failures", "enqueue_at_front", "enqueue_at_front_on_retry")},
    "exc_info": _exc_info,
}


def check_job_hash(raw: dict) -> tuple[dict[bytes, bytes], bytes, list[str]]:
    """The hash with its bad fields left out (the payload replaced by ``PLACEHOLDER``), the payload as RQ would
    read it (inflated, bounded), and one reason per bad field."""
    clean: dict[bytes, bytes] = {}
    problems: list[str] = []
    for key, value in raw.items():
        try:
            name = key.decode("utf-8") if isinstance(key, bytes) else str(key)
        except UnicodeDecodeError:
            problems.append("a field name that is not UTF-8")
            continue
        value = value if isinstance(value, bytes) else str(value).encode()
        check = CHECKS.get(name)
        try:
            if check is not None and value:  # RQ reads an empty value as unset
                check(value)
        except Exception as exc:  # a parser's own error: the value is bad, whatever the parser
            problems.append(f"{name[:40]}: {str(exc)[:120] or type(exc).__name__}")
            continue
        clean[name.encode()] = value
    data = clean.pop(b"data", None)
    if data is None:
        problems.append("data: missing")
        data = b""
    elif len(data) > MAX_JOB_BYTES:
        problems.append(f"data: {len(data)} bytes, over the cap of {MAX_JOB_BYTES}")
        data = b""
    else:
        try:
            data = inflate_bounded(data, MAX_JOB_BYTES)
        except ValueError as exc:
            problems.append(f"data: {exc}")
            data = b""
    clean[b"data"] = PLACEHOLDER
    return clean, data, problems


def check_result(payload: dict) -> None:
    """Raise ValueError unless RQ can read this result entry within the caps (``exc_string`` is zlib in base64,
    inflated by ``Result.restore`` with no bound)."""
    exc = payload.get(b"exc_string")
    if exc:
        if len(exc) > 2 * MAX_EXC_INFO_BYTES:
            raise ValueError("exc_string: too long")
        raw = base64.b64decode(exc, validate=True)
        if inflate_bounded(raw, MAX_EXC_INFO_BYTES) is raw:
            raise ValueError("exc_string: not zlib")
    value = payload.get(b"return_value")
    if value and len(value) > MAX_JOB_BYTES:
        raise ValueError("return_value: too long")


class CheckedJob(Job):
    """An RQ job whose hash is checked field by field before RQ reads it (``check_job_hash``), and whose
    latest result is checked before RQ inflates it (``check_result``)."""

    hash_problems: list[str] = []

    def restore(self, raw_data) -> Any:
        clean, data, problems = check_job_hash(raw_data)
        super().restore(clean)
        self.data = data
        self.hash_problems = problems

    def latest_result(self, timeout: int = 0) -> Result | None:
        """RQ's latest result of this job; None when the entry is not one RQ wrote (junk, a bomb)."""
        if timeout:
            return super().latest_result(timeout)
        entries = self.connection.xrevrange(Result.get_key(self.id), "+", "-", count=1)
        if not entries:
            return None
        result_id, payload = entries[0]
        try:
            if not isinstance(result_id, bytes) or not isinstance(payload, dict):
                raise TypeError("not a result entry")  # a bytes-mode client (RQ's) gives bytes and a dict
            check_result(payload)
            return Result.restore(
                self.id, result_id.decode(), payload, connection=self.connection, serializer=self.serializer
            )
        except Exception as exc:  # whatever RQ's parsers raise on bytes it did not write
            log.warning("job %s: unreadable result entry skipped (%s)", self.id, type(exc).__name__)
            return None
