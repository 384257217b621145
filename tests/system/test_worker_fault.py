"""kill -9 a worker in the middle of a job, start another: the job finishes, each image exactly once.

The first worker dies with no chance to clean up (SIGKILL) after at least one
image is stored. Its job stays 'started' in RQ's StartedJobRegistry; the next
``oodsynth worker`` finds that the job's worker is gone and hands the job to
RQ's abandoned-job cleanup, which retries it (``Retry``). The retry skips the
images already stored and decodes the rest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rq.job import Job
from rq.serializers import JSONSerializer

from oodsynth.config import get_settings
from oodsynth.queue.enqueue import connect, enqueue_decode, job_status, queue_stats
from oodsynth.queue.payloads import DecodeJob, build_items
from oodsynth.store.results import ResultStore

pytestmark = pytest.mark.slow  # worker processes, kill -9

WORDS = ["cat", "ship", "horse"]  # the session tiny_sd (conftest) knows these words
WORKER = [sys.executable, "-c", "from oodsynth.cli import main; main()", "worker", "--burst", "--no-scheduler"]
N_IMAGES = 6


def _job(model: str) -> DecodeJob:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(N_IMAGES, 768)).astype(np.float32)
    vectors *= 0.38 / np.linalg.norm(vectors, axis=1, keepdims=True)
    classes = np.arange(N_IMAGES) % len(WORDS)
    items = build_items(
        dataset="fault",
        vectors=vectors,
        class_index=classes,
        class_names=WORDS,
        vector_ids=[f"fault:{i}" for i in range(N_IMAGES)],
        sampler="inline",
        seed=0,
    )
    return DecodeJob(dataset="fault", model=model, items=items, steps=2, height=64, width=64, output_size=32)


def test_kill_9_mid_job_then_another_worker_finishes(redis_url, tiny_sd, settings_env, tmp_path):
    settings = settings_env(MODEL=tiny_sd, GPU_BATCH_SIZE=1, IMAGES_PER_JOB=N_IMAGES, DEVICE="cpu", JOB_RETRIES=2)
    store = ResultStore(settings.store)
    (job_id,) = enqueue_decode(_job(str(tiny_sd)))
    connection = connect()

    first = subprocess.Popen(WORKER, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    progress = {"done": 0}
    while progress["done"] < 1:
        assert first.poll() is None, first.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the first worker stored no image within 240 s"
        time.sleep(0.05)
        progress = Job.fetch(job_id, connection=connection, serializer=JSONSerializer).get_meta()["progress"]
    # GET /queue's view while the worker is busy: it is listed with the job it runs.
    (live,) = queue_stats(connection)["workers"]
    assert live["state"] == "busy" and live["current_job"] == job_id and live["pid"] == first.pid
    os.kill(first.pid, signal.SIGKILL)
    first.wait()  # reap it: a zombie's pid still answers kill(pid, 0)
    first.stderr.close()

    killed = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    assert killed.get_status() == "started"
    done_at_kill = killed.get_meta()["progress"]["done"]
    assert 1 <= done_at_kill < N_IMAGES, "the job finished before the kill: the test proved nothing"
    # Reading a job's state (GET /jobs/{id}) has no side effect: the dead worker's job stays started.
    assert job_status(job_id, connection)["status"] == "started"
    assert Job.fetch(job_id, connection=connection, serializer=JSONSerializer).get_status() == "started"

    second = subprocess.run(WORKER, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "requeued 1 abandoned jobs" in second.stderr

    state = job_status(job_id)
    assert state["status"] == "finished", state
    assert state["progress"] == {"done": N_IMAGES, "total": N_IMAGES}
    assert state["retries_left"] == 1  # the abandoned run used one of RQ's retries
    assert state["result"]["skipped"] >= done_at_kill and len(state["result"]["images"]) == N_IMAGES

    records = store.records("fault")
    assert len(records) == N_IMAGES == len({r.image_id for r in records})
    assert len(store.manifest_rows("fault")) == N_IMAGES  # no duplicate row in any shard
    report = store.verify("fault")
    assert report.ok, report  # no orphans, no missing files, no temp files of the killed writer
    assert sorted(r.path for r in records) == sorted(state["result"]["images"])
    for rec in records:
        with Image.open(Path(get_settings().store) / rec.path) as im:
            im.load()
            assert im.size == (32, 32)
