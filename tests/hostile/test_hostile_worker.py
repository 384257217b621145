"""The queue: whatever bytes land in Redis, the worker refuses them, records why, and goes on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from oodsynth.config import get_settings
from oodsynth.queue.enqueue import REFUSED_KEY, enqueue_decode, job_status, queue_stats, refused_jobs
from oodsynth.queue.payloads import DecodeJob, build_items
from oodsynth.worker.process import build_worker

WORDS = ["cat", "ship", "horse"]  # the session tiny_sd (conftest) knows these words
WORKER = [sys.executable, "-c", "from oodsynth.cli import main; main()", "worker", "--no-scheduler"]


def _stop(worker: subprocess.Popen) -> None:
    """Clean-up after the assertions: SIGTERM (a warm shutdown), then SIGKILL if it is not done in 60 s. On a
    machine loaded by other niced work the warm shutdown once took longer than that, after every assertion held."""
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(timeout=30)


def _valid_job(model: str, dataset: str = "hostile", n: int = 2) -> DecodeJob:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, 768)).astype(np.float32)
    vectors *= 0.38 / np.linalg.norm(vectors, axis=1, keepdims=True)
    items = build_items(
        dataset=dataset,
        vectors=vectors,
        class_index=np.arange(n) % len(WORDS),
        class_names=WORDS,
        vector_ids=[f"{dataset}:{i}" for i in range(n)],
        sampler="inline",
        seed=0,
    )
    return DecodeJob(dataset=dataset, model=model, items=items, steps=2, height=64, width=64, output_size=32)


def _garbage(conn: redis.Redis, queue: Queue, n: int, seed: int = 0) -> list[str]:
    """``n`` hostile entries: random ids pushed on the queue, and jobs whose hash fields or payload are random."""
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(n):
        junk = rng.bytes(int(rng.integers(1, 200)))
        kind = i % 4
        if kind == 0:  # a random byte string as the queue entry itself
            conn.rpush(queue.key, junk)
            continue
        job_id = f"junk-{seed}-{i}"
        ids.append(job_id)
        fields = {"data": junk, "origin": queue.name, "status": "queued", "created_at": "2026-01-01T00:00:00.000000Z"}
        if kind == 2:  # a compressed pickle: never unpickled, refused
            fields["data"] = zlib.compress(b"\x80\x04\x95" + junk)
        if kind == 3:  # every field random
            fields = {k: rng.bytes(int(rng.integers(1, 40))) for k in ("data", "status", "created_at", "timeout")}
        conn.hset(f"rq:job:{job_id}", mapping=fields)
        conn.rpush(queue.key, job_id)
    return ids


@pytest.fixture
def queue(redis_url) -> Queue:
    return Queue(get_settings().queue_name, connection=redis.Redis.from_url(redis_url), serializer=JSONSerializer)


def test_undecodable_jobs_are_refused_recorded_and_the_worker_goes_on(queue):
    """One job whose data did not deserialise stopped the worker: the refusal path read func_name again."""
    ids = _garbage(queue.connection, queue, 40)
    marker = queue.enqueue("os.system", "true")  # a readable job after them, refused by name
    assert build_worker(preload=False).work(burst=True)
    assert queue.count == 0
    assert queue.started_job_registry.count == 0
    assert queue.connection.llen(f"{queue.key}:intermediate") == 0
    refused = refused_jobs(queue.connection, latest=100)
    assert refused["count"] == 41
    assert all(e["reason"].startswith("refused:") for e in refused["latest"])
    failed = Job.fetch(marker.id, connection=queue.connection, serializer=JSONSerializer)
    assert failed.get_status() == JobStatus.FAILED
    readable = [i for i in ids if queue.failed_job_registry.get_job_ids().count(i)]
    assert readable, "jobs with a readable hash land in the failed registry"
    assert queue_stats(queue.connection)["refused_jobs"]["count"] == 41  # GET /queue shows them


def test_a_worker_job_over_the_api_caps_is_refused_before_any_work(redis_url, tiny_sd, settings_env):
    """The worker's job model accepted 1,000 steps, 2048 squared and a 1 MB prompt that the API refuses."""
    settings = settings_env(MODEL=tiny_sd, DEVICE="cpu", MAX_DECODE_STEPS=10, MAX_DECODE_PIXELS=64 * 64)
    from oodsynth.errors import InputError
    from oodsynth.worker.decode_job import DecoderCache, run_decode_job

    base = _valid_job(str(tiny_sd)).model_dump(mode="json")
    decoders = DecoderCache()
    for change, field in (
        ({"steps": 11}, "steps"),
        ({"height": 2048, "width": 2048}, "height"),
        ({"prompt_template": "{token}" + "x" * 10**6}, "prompt_template"),
        ({"items": [{**base["items"][0], "class_name": "../../.."}]}, "items[0].class_name"),
        ({"items": [{**base["items"][0], "class_name": "x" * 5000}]}, "items[0].class_name"),
    ):
        with pytest.raises(InputError) as err:
            run_decode_job({**base, **change}, settings, decoders)
        assert err.value.field == field, err.value
    assert decoders._decoder is None  # refused before the pipeline was loaded


@pytest.mark.slow
def test_a_worker_fed_1000_random_byte_strings_then_a_valid_job_decodes_it_and_keeps_running(
    redis_url, tiny_sd, settings_env, queue, tmp_path
):
    """The target: 1,000 random byte strings as jobs, then one valid job; the worker decodes it and still runs."""
    settings = settings_env(MODEL=tiny_sd, DEVICE="cpu", GPU_BATCH_SIZE=2)
    _garbage(queue.connection, queue, 1000, seed=1)
    log = open(tmp_path / "worker.log", "wb")  # a file, not a pipe: 1,000 refusal lines would fill a pipe's buffer
    worker = subprocess.Popen(WORKER, stdout=log, stderr=log, env=dict(os.environ))
    try:
        (job_id,) = enqueue_decode(_valid_job(str(settings.model)), queue.connection, settings=settings)
        deadline = time.monotonic() + 240
        while job_status(job_id, queue.connection)["status"] not in ("finished", "failed"):
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the valid job did not finish"
            time.sleep(0.5)
        state = job_status(job_id, queue.connection)
        assert state["status"] == "finished", state
        assert state["result"]["written"] == 2
        time.sleep(1.0)
        assert worker.poll() is None, "the worker stopped after the job"
        assert queue.connection.llen(REFUSED_KEY) == 1000
        assert json.loads(queue.connection.lindex(REFUSED_KEY, 0))["reason"].startswith("refused:")
    finally:
        _stop(worker)
        log.close()
