"""Round three: a worker that no Redis entry can stop. Real job hashes, mutated field by field, then a valid job.

``HOSTILE_MUTATIONS`` sets how many mutated hashes the mutation test feeds (300 here, 10,000 for the target run:
``HOSTILE_MUTATIONS=10000 .venv/bin/python -m pytest -q -n 0 tests/hostile/test_hostile_job_hash.py -k mutated``).
"""

from __future__ import annotations

import json
import os
import time
import zlib

import numpy as np
import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from test_hostile_worker import _valid_job

from oodsynth.config import get_settings
from oodsynth.errors import NotFound
from oodsynth.queue.enqueue import enqueue_decode, job_status
from oodsynth.queue.job_hash import MAX_JOB_BYTES, CheckedJob, check_job_hash, inflate_bounded
from oodsynth.worker.process import build_worker

MUTATIONS = int(os.environ.get("HOSTILE_MUTATIONS", "300"))
HUGE = [b"1" + b"0" * 20, b"-1" + b"0" * 20, b"9" * 400, b"1e400", b"nan", b"-5", b"0", b"inf"]
JUNK_VALUES = [b"", b"\xff\xfe", b"\x00", b"[]", b"{}", b"null", b"[1e400]", b'["../x"]', b"yes", b"1h", b"-1"]


def _bomb(size: int = 2 * MAX_JOB_BYTES) -> bytes:
    """A zlib stream of ``size`` zero bytes: about a megabyte stored per gigabyte inflated."""
    z = zlib.compressobj(1)
    chunk = b"\0" * 2**24
    return b"".join(z.compress(chunk) for _ in range(size // len(chunk))) + z.flush()


@pytest.fixture
def queue(redis_url) -> Queue:
    return Queue(get_settings().queue_name, connection=redis.Redis.from_url(redis_url), serializer=JSONSerializer)


def _real_hash(queue: Queue, settings) -> dict[bytes, bytes]:
    """The hash of a job as the API enqueues it (then removed from the queue: only its fields are used)."""
    (job_id,) = enqueue_decode(_valid_job(str(settings.model), n=1), queue.connection, settings=settings)
    fields = queue.connection.hgetall(f"rq:job:{job_id}")
    queue.connection.delete(f"rq:job:{job_id}")
    queue.connection.lrem(queue.key, 0, job_id)
    return fields


def _mutate(fields: dict[bytes, bytes], rng: np.random.Generator) -> dict[bytes, bytes]:
    """One to three fields of a real hash replaced by a hostile value, or deleted."""
    out = dict(fields)
    for key in rng.choice(sorted(fields), size=int(rng.integers(1, 4)), replace=False):
        roll = rng.random()
        if roll < 0.1:
            del out[key]
        elif roll < 0.45:
            out[key] = HUGE[int(rng.integers(len(HUGE)))]
        elif roll < 0.75:
            out[key] = JUNK_VALUES[int(rng.integers(len(JUNK_VALUES)))]
        else:
            out[key] = rng.bytes(int(rng.integers(1, 64)))
    return out


def test_a_timeout_of_1e20_fails_the_job_with_its_reason_and_the_worker_goes_on(queue, tiny_sd, settings_env):
    """A job hash whose ``timeout`` is 10^20 made RQ's EXPIRE fail; the worker quit, the job stayed intermediate."""
    settings = settings_env(MODEL=tiny_sd, DEVICE="cpu")
    fields = _real_hash(queue, settings)
    for i, (field, value) in enumerate([(b"timeout", b"1" + b"0" * 20), (b"failure_ttl", b"1" + b"0" * 20)]):
        queue.connection.hset(f"rq:job:bad-{i}", mapping={**fields, field: value})
        queue.connection.rpush(queue.key, f"bad-{i}")
    assert build_worker(preload=False).work(burst=True)
    assert queue.connection.llen(f"{queue.key}:intermediate") == 0 and queue.count == 0
    for i, field in enumerate(("timeout", "failure_ttl")):
        job = Job.fetch(f"bad-{i}", connection=queue.connection, serializer=JSONSerializer)
        assert job.get_status() == JobStatus.FAILED
        assert f"bad job fields: {field}" in job_status(f"bad-{i}", queue.connection)["error"]


def test_a_zlib_bomb_is_never_inflated_past_the_cap(queue):
    """A 1 MB zlib bomb in a job hash took the worker to 3.2 GB, and ``GET /jobs/{id}`` the API to 2.7 GB."""
    bomb = _bomb()
    assert len(bomb) < 2**20
    with pytest.raises(ValueError, match="cap"):
        inflate_bounded(bomb, MAX_JOB_BYTES)
    queue.connection.hset("rq:job:bomb", mapping={"data": bomb, "origin": queue.name, "status": "queued"})
    job = CheckedJob.fetch("bomb", connection=queue.connection, serializer=JSONSerializer)
    assert job.hash_problems and "cap" in job.hash_problems[0] and job.data == b""
    with pytest.raises(NotFound):  # GET /jobs/{id}: 404 (no readable payload), read within the cap
        job_status("bomb", queue.connection)


@pytest.mark.parametrize(
    "field, value",
    [
        (b"timeout", b"1" + b"0" * 20),
        (b"result_ttl", b"-7"),
        (b"ttl", b"9" * 30),
        (b"retry_intervals", b"[1e300]"),
        (b"retries_left", b"1000000"),
        (b"dependency_ids", b'["a", "../../x"]'),
        (b"meta", b"[1, 2]"),
        (b"created_at", b"\xff"),
        (b"status", b"running wild"),
        (b"origin", b"\xff"),
        (b"\xff", b"1"),
    ],
)
def test_each_field_is_checked(field, value):
    clean, _, problems = check_job_hash({b"data": b"{}", field: value})
    assert len(problems) == 1 and field not in clean, problems


def test_mutated_job_hashes_then_a_valid_job(queue, tiny_sd, settings_env):
    """The target: mutated real job hashes (field by field), then the worker decodes a valid job; 0 intermediate."""
    settings = settings_env(MODEL=tiny_sd, DEVICE="cpu", GPU_BATCH_SIZE=2, MAX_DECODE_STEPS=10)
    rng = np.random.default_rng(3)
    fields = _real_hash(queue, settings)
    payload = json.loads(zlib.decompress(fields[b"data"]))
    payload[2][0]["steps"] = 11  # over the cap: a mutated hash that is still readable fails fast, before decoding
    fields[b"data"] = zlib.compress(json.dumps(payload).encode(), 0)
    with queue.connection.pipeline(transaction=False) as pipe:
        for i in range(MUTATIONS):
            pipe.hset(f"rq:job:m-{i}", mapping=_mutate(fields, rng))
            pipe.rpush(queue.key, f"m-{i}")
        pipe.execute()
    started = time.monotonic()
    worker = build_worker(preload=False)
    assert worker.work(burst=True)
    elapsed = time.monotonic() - started
    left = queue.connection.lrange(f"{queue.key}:intermediate", 0, -1)
    assert not left, [(i, queue.connection.hget(b"rq:job:" + i, "origin")) for i in left]
    assert queue.count == 0
    assert queue.started_job_registry.count == 0
    (job_id,) = enqueue_decode(_valid_job(str(settings.model)), queue.connection, settings=settings)
    assert build_worker(preload=False).work(burst=True)
    state = job_status(job_id, queue.connection)
    assert state["status"] == "finished" and state["result"]["written"] == 2, state
    print(f"{MUTATIONS} mutated hashes in {elapsed:.1f} s ({MUTATIONS / elapsed:.0f}/s)")


def test_a_bomb_or_junk_in_a_jobs_result_stream_is_skipped(queue):
    """``GET /jobs/{id}`` reads the latest result, whose ``exc_string`` RQ inflates with no bound."""
    import base64

    queue.connection.hset("rq:job:r", mapping={"data": b"{}", "origin": queue.name, "status": "failed"})
    stream = "rq:results:r"
    bomb = base64.b64encode(_bomb()).decode()
    job = CheckedJob.fetch("r", connection=queue.connection, serializer=JSONSerializer)
    for payload in ({"type": 2, "exc_string": bomb}, {"type": 2, "exc_string": "\xff"}, {"type": "x"}):
        queue.connection.xadd(stream, payload)
        assert job.latest_result() is None
    queue.connection.xadd(stream, {"type": 2, "exc_string": base64.b64encode(zlib.compress(b"Error: x")).decode()})
    assert job.latest_result().exc_string == "Error: x"
