"""kill -9 the Redis server mid-queue, start it again on the same folder (AOF): nothing is lost, the worker goes on.

Redis runs as the embedded server does in production (``start_embedded_redis(..., appendonly=True)``:
``appendonly yes``, ``appendfsync everysec``). A fit, a sample and six one-image jobs are written; a
worker starts on them; once it has finished a job, Redis is killed with SIGKILL and, a moment later,
started again on its folder. The fit, the sample and every job come back from the AOF, the worker
reconnects by itself and finishes the queue, and the store holds every image exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from oodsynth.config import get_settings
from oodsynth.redis_conn import start_embedded_redis
from oodsynth.registry import FitCache, FitRegistry, SampleRegistry
from oodsynth.service import GenerateRequest, create_fit, draw_sample, enqueue_generation, plan_generation
from oodsynth.store import ResultStore
from toy_banks import toy_bank

WORDS = ["cat", "ship", "horse"]  # the session tiny_sd (conftest) knows these words
WORKER = [sys.executable, "-c", "from oodsynth.cli import main; main()", "worker", "--burst", "--no-scheduler"]


def finished(job_ids, connection) -> int:
    return sum(Job.fetch(j, connection=connection, serializer=JSONSerializer).get_status() == "finished" for j in job_ids)


def test_kill_9_redis_mid_queue_then_restart_on_its_aof(tiny_sd, settings_env, tmp_path, monkeypatch):
    folder = tmp_path / "redis"
    server = start_embedded_redis(folder, appendonly=True)
    monkeypatch.setenv("OODSYNTH_REDIS_URL", server.url)
    settings = settings_env(MODEL=tiny_sd, GPU_BATCH_SIZE=1, IMAGES_PER_JOB=1, DEVICE="cpu", JOB_RETRIES=2)
    worker = None
    try:
        connection = redis.Redis.from_url(server.url)
        fits, samples = FitRegistry(connection, cache=FitCache()), SampleRegistry(connection)
        create_fit(fits, "toy", toy_bank(3, 20, 768, names=WORDS))
        sample = draw_sample(fits, samples, settings, fit="toy", method="class_interpolation", n_per_class=2, seed=0)
        request = GenerateRequest(dataset="restart", sample_id=sample.sample_id, steps=2, height=64, width=64,
                                  output_size=32, seed=0)
        job_ids = enqueue_generation(plan_generation(request, fits, samples, settings), connection, settings)
        assert len(job_ids) == 6

        worker = subprocess.Popen(WORKER, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while (done_at_kill := finished(job_ids, connection)) < 1:
            assert worker.poll() is None, worker.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the worker finished no job within 120 s"
            time.sleep(0.02)
        server.process.send_signal(signal.SIGKILL)  # no shutdown save: only the AOF has the data
        server.process.wait()
        assert done_at_kill < 6, "the queue was done before the kill: the test proved nothing"
        time.sleep(1.0)  # the worker meets a dead Redis and waits (oodsynth.redis_conn.restart_retry)
        assert worker.poll() is None, "the worker died with Redis: " + worker.stderr.read()[-3000:]
        server = start_embedded_redis(folder, appendonly=True)  # the same folder: the AOF is replayed
        connection = redis.Redis.from_url(server.url)

        # Everything written before the kill is back: the fit, the sample, and every job.
        assert FitRegistry(connection, cache=FitCache()).get("toy")[0].dim == 768
        assert (SampleRegistry(connection).get(sample.sample_id).vectors == sample.vectors).all()
        assert all(Job.exists(j, connection=connection) for j in job_ids)
        assert finished(job_ids, connection) >= done_at_kill

        stderr = worker.communicate(timeout=120)[1]  # the same worker process finishes the queue
        assert worker.returncode == 0, stderr[-3000:]
        assert finished(job_ids, connection) == 6
        store = ResultStore(get_settings().store)
        records = store.records("restart")
        assert len(records) == 6 == len({r.image_id for r in records})  # every image exactly once
        assert len(store.manifest_rows("restart")) == 6
        assert store.verify("restart").ok
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        server.stop()
