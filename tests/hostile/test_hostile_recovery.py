"""Round three, recovery in time: a retry after a killed worker is picked up in seconds, not when RQ's lock returns.

After a worker was killed mid-job and restarted, the retried job sat in "scheduled" for 13 minutes: the dead
worker's scheduler lock outlived it, and the new worker tried the lock again only at RQ's 10-minute maintenance.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from test_hostile_worker import _valid_job

from oodsynth.queue.enqueue import connect, enqueue_decode, job_status

pytestmark = pytest.mark.slow  # worker processes, kill -9

WORKER = [sys.executable, "-c", "from oodsynth.cli import main; main()", "worker"]  # with RQ's scheduler
PICKED_UP_WITHIN_S = 60


def _wait(condition, timeout: float, what: str, log) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s\n{log.read_text()[-3000:]}"
        time.sleep(0.1)


def test_a_retry_after_a_killed_worker_is_picked_up_within_60_s(redis_url, tiny_sd, settings_env, tmp_path):
    settings = settings_env(MODEL=tiny_sd, DEVICE="cpu", GPU_BATCH_SIZE=1, IMAGES_PER_JOB=6, JOB_RETRIES=2)
    connection = connect()
    (job_id,) = enqueue_decode(_valid_job(str(tiny_sd), dataset="recovery", n=6), connection, settings=settings)
    # As after one retry already: the next one waits out a back-off in RQ's scheduled registry (5 s here).
    connection.hset(f"rq:job:{job_id}", mapping={"retries_left": 1, "retry_intervals": "[0, 5]"})
    lock = RQScheduler.get_locking_key(settings.queue_name)
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        first = subprocess.Popen(WORKER, stdout=out, stderr=out, start_new_session=True)
        try:
            progress = lambda: Job.fetch(job_id, connection=connection, serializer=JSONSerializer).get_meta()  # noqa: E731
            _wait(lambda: progress()["progress"]["done"] >= 1 and connection.exists(lock), 240, "an image", log)
        finally:
            os.killpg(first.pid, signal.SIGKILL)  # the worker and its scheduler process, as a container dies
            first.wait()
        assert connection.exists(lock), "the dead scheduler's lock is left behind"
        assert job_status(job_id, connection)["status"] == "started"
        second = subprocess.Popen(WORKER, stdout=out, stderr=out, start_new_session=True)
        try:
            started = time.monotonic()
            _wait(lambda: job_status(job_id, connection)["status"] == "scheduled", 120, "the retry scheduled", log)
            _wait(
                lambda: job_status(job_id, connection)["status"] in ("started", "finished"),
                PICKED_UP_WITHIN_S,
                "the retry picked up",
                log,
            )
            picked = time.monotonic() - started
            _wait(lambda: job_status(job_id, connection)["status"] == "finished", 240, "the retry finished", log)
        finally:
            os.killpg(second.pid, signal.SIGTERM)
            second.wait(timeout=60)
    assert job_status(job_id, connection)["result"]["written"] >= 1
    print(f"retry picked up {picked:.1f} s after the second worker started")
