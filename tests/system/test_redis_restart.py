"""kill -9 the Redis server mid-queue, start it again on the same folder (AOF): nothing is lost, the worker goes on.

Redis runs as the embedded server does in production (``start_embedded_redis(..., appendonly=True)``:
``appendonly yes``, ``appendfsync everysec``). A fit, a sample and two three-image jobs are written; the
worker (``oodsynth.worker.process.run_worker``, in this process) starts on them; once it has stored the first
image of the first job, another thread kills Redis with SIGKILL and, a second later, starts it again on
its folder. The fit, the sample and every job come back from the AOF, the worker waits for Redis
inside its job and finishes the queue without quitting (RQ's worker quits on a connection error
mid-job), and the store holds every image exactly once.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from oodsynth.config import get_settings
from oodsynth.service import GenerateRequest, create_fit, draw_sample, enqueue_generation, plan_generation
from oodsynth.state.fits import FitCache, FitRegistry
from oodsynth.state.redis_conn import start_embedded_redis
from oodsynth.state.samples import SampleRegistry
from oodsynth.store.results import ResultStore
from oodsynth.worker.process import run_worker
from tests.helpers.toy_banks import toy_bank

pytestmark = pytest.mark.slow  # kills and restarts the Redis process

WORDS = ["cat", "ship", "horse"]  # the session tiny_sd (conftest) knows these words


def finished(job_ids, connection) -> int:
    return sum(
        Job.fetch(j, connection=connection, serializer=JSONSerializer).get_status() == "finished" for j in job_ids
    )


def test_kill_9_redis_mid_queue_then_restart_on_its_aof(tiny_sd, settings_env, tmp_path, monkeypatch):
    folder = tmp_path / "redis"
    server = start_embedded_redis(folder, appendonly=True)
    monkeypatch.setenv("OODSYNTH_REDIS_URL", server.url)
    settings = settings_env(MODEL=tiny_sd, GPU_BATCH_SIZE=1, IMAGES_PER_JOB=3, DEVICE="cpu", JOB_RETRIES=2)
    servers = [server]
    killer = None
    try:
        connection = redis.Redis.from_url(server.url)
        fits, samples = FitRegistry(connection, cache=FitCache()), SampleRegistry(connection)
        create_fit(fits, "toy", toy_bank(3, 20, 768, names=WORDS))
        sample = draw_sample(fits, samples, settings, fit="toy", method="class_interpolation", n_per_class=2, seed=0)
        request = GenerateRequest(
            dataset="restart", sample_id=sample.sample_id, steps=2, height=64, width=64, output_size=32, seed=0
        )
        job_ids = enqueue_generation(plan_generation(request, fits, samples, settings), connection, settings)
        assert len(job_ids) == 2  # three images each, decoded one at a time
        outage: dict = {}

        def kill_and_restart() -> None:
            """Once the worker is inside the first job (an image of three stored): SIGKILL Redis, wait 1 s,
            start it again on its folder."""
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                job = Job.fetch(job_ids[0], connection=connection, serializer=JSONSerializer)
                state = (job.get_status(), job.get_meta()["progress"]["done"])
                if state[0] != "queued" and state[1] >= 1:
                    break
                time.sleep(0.01)
            servers[0].process.send_signal(signal.SIGKILL)  # no shutdown save: only the AOF has the data
            servers[0].process.wait()
            outage["first_job_at_kill"] = state
            time.sleep(1.0)  # meanwhile the worker meets a dead Redis and waits (redis_conn.restart_retry)
            servers.append(start_embedded_redis(folder, appendonly=True))  # the AOF is replayed

        killer = threading.Thread(target=kill_and_restart, daemon=True)
        killer.start()
        # The worker runs here, in this process, until the queue is empty; Redis dies under it mid-job.
        assert run_worker(burst=True, with_scheduler=False, logging_level="WARNING")
        killer.join(timeout=60)
        assert outage["first_job_at_kill"][0] == "started" and outage["first_job_at_kill"][1] < 3, (
            f"not killed mid-job: {outage}"
        )
        assert len(servers) == 2 and servers[0].process.returncode == -signal.SIGKILL

        connection = redis.Redis.from_url(servers[1].url)
        # Everything written before the kill came back: the fit, the sample and every job, each finished.
        assert FitRegistry(connection, cache=FitCache()).get("toy")[0].dim == 768
        assert (SampleRegistry(connection).get(sample.sample_id).vectors == sample.vectors).all()
        assert finished(job_ids, connection) == 2
        store = ResultStore(get_settings().store)
        records = store.records("restart")
        assert len(records) == 6 == len({r.image_id for r in records})  # every image exactly once
        assert len(store.manifest_rows("restart")) == 6
        assert store.verify("restart").ok
    finally:
        if killer is not None:
            killer.join(timeout=60)  # it may still be starting the second server
        for each in servers:
            each.stop()
