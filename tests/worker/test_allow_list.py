"""The worker runs only the project's job function: a hostile JSON job written to the real queue runs nothing."""

from __future__ import annotations

import sys

import pytest
import redis
from rq import Callback, Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from oodsynth.config import get_settings
from oodsynth.queue.enqueue import JOB_FUNCTION
from oodsynth.worker.process import build_worker


@pytest.fixture
def queue(redis_url) -> Queue:
    conn = redis.Redis.from_url(redis_url)
    return Queue(get_settings().queue_name, connection=conn, serializer=JSONSerializer)


def _run_worker() -> None:
    build_worker(preload=False).work(burst=True)


def _failure(queue: Queue, job: Job) -> tuple[JobStatus, str]:
    job = Job.fetch(job.id, connection=queue.connection, serializer=JSONSerializer)
    return job.get_status(), job.latest_result().exc_string


def test_os_system_job_is_refused_and_runs_nothing(queue, tmp_path):
    marker = tmp_path / "pwned"
    job = queue.enqueue("os.system", f"touch {marker}", retry=None)
    _run_worker()
    assert not marker.exists()
    status, error = _failure(queue, job)
    assert status == JobStatus.FAILED
    assert "'os.system' is not allowed" in error and JOB_FUNCTION in error
    assert queue.failed_job_registry.get_job_ids() == [job.id]
    assert queue.count == 0


def test_refused_job_is_not_retried(queue, tmp_path):
    from rq import Retry

    marker = tmp_path / "pwned"
    job = queue.enqueue("subprocess.call", ["touch", str(marker)], retry=Retry(max=3))
    _run_worker()
    assert not marker.exists()
    assert _failure(queue, job)[0] == JobStatus.FAILED
    assert queue.count == 0 and queue.scheduled_job_registry.count == 0


def test_allowed_function_with_a_hostile_callback_is_refused(queue, tmp_path):
    marker = tmp_path / "pwned"
    # The payload is bad too, so the job would fail and call its failure callback if it ran.
    job = queue.enqueue(JOB_FUNCTION, {}, on_failure=Callback("os.system"))
    _run_worker()
    assert not marker.exists()
    status, error = _failure(queue, job)
    assert status == JobStatus.FAILED and "callbacks (failure_callback_name)" in error


def test_refusal_imports_nothing(queue):
    name = "json.tool"  # a stdlib module this process has not imported; refusing must not import it
    assert name not in sys.modules
    job = queue.enqueue(f"{name}.main")
    _run_worker()
    assert name not in sys.modules
    assert _failure(queue, job)[0] == JobStatus.FAILED
