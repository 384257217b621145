"""Several worker processes on one queue (``oodsynth worker --processes N``, the launcher behind ``--gpus``).

Two processes share one real Redis queue and one store; each may take at
most half of the jobs (``--max-jobs``), so the queue drains only if both
worked it, and every image must be stored exactly once.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from rq.job import Job
from rq.serializers import JSONSerializer
from typer.testing import CliRunner

from oodsynth.cli import app
from oodsynth.errors import InputError
from oodsynth.queue.enqueue import connect, enqueue_decode, job_status
from oodsynth.queue.payloads import DecodeJob, build_items
from oodsynth.store.results import ResultStore
from oodsynth.worker.process import gpu_assignments

pytestmark = pytest.mark.slow  # worker processes

WORDS = ["cat", "ship", "horse"]  # the session tiny_sd (conftest) knows these words
N_JOBS, PER_JOB = 6, 2
LAUNCH = ["worker", "--burst", "--no-scheduler", "--processes", "2", "--max-jobs", str(N_JOBS // 2)]


@pytest.mark.slow  # two worker processes import torch + diffusers: ~15 CPU-s, 20-30 s on the busy 2-core machine
def test_two_worker_processes_drain_one_queue_each_image_once(redis_url, tiny_sd, settings_env):
    settings = settings_env(MODEL=tiny_sd, GPU_BATCH_SIZE=PER_JOB, IMAGES_PER_JOB=PER_JOB, DEVICE="cpu")
    n = N_JOBS * PER_JOB
    v = np.random.default_rng(0).normal(size=(n, 768)).astype(np.float32)
    v *= 0.38 / np.linalg.norm(v, axis=1, keepdims=True)
    items = build_items(
        dataset="multi",
        vectors=v,
        class_index=np.arange(n) % 3,
        class_names=WORDS,
        vector_ids=[f"m:{i}" for i in range(n)],
        sampler="inline",
        seed=0,
    )
    job_ids = enqueue_decode(
        DecodeJob(dataset="multi", model=str(tiny_sd), items=items, steps=2, height=32, width=32, output_size=16)
    )
    assert len(job_ids) == N_JOBS

    # The launcher runs in this process (the CLI command itself); its two children are real worker processes.
    run = CliRunner().invoke(app, LAUNCH)
    assert run.exit_code == 0, run.output

    states = [job_status(j) for j in job_ids]
    assert [s["status"] for s in states] == ["finished"] * N_JOBS, states
    connection = connect()
    workers = [Job.fetch(j, connection=connection, serializer=JSONSerializer).worker_name for j in job_ids]
    assert len(set(workers)) == 2 and all(workers.count(w) == N_JOBS // 2 for w in set(workers)), workers
    store = ResultStore(settings.store)
    records = store.records("multi")
    assert sorted(r.image_id for r in records) == sorted(item.image_id for item in items)
    assert len(store.manifest_rows("multi")) == n and store.verify("multi").ok


def test_gpu_ids_map_to_each_process_device():
    assert gpu_assignments("all", 2) == ["0", "1"]
    assert gpu_assignments(" 1 ", 2) == ["1"]
    # under CUDA_VISIBLE_DEVICES=2,3,5,7 ids index that list
    assert gpu_assignments("1,3", 4, inherited="2,3,5,7") == ["3", "7"]
    assert gpu_assignments("all", 4, inherited="2,3,5,7") == ["2", "3", "5", "7"]
    for spec, message in (
        ("4", "no CUDA device 4"),
        ("-1", "no CUDA device -1"),
        ("0,0", "repeat"),
        ("first", "expected 'all'"),
        ("", "expected 'all'"),
    ):
        with pytest.raises(InputError, match=message) as err:
            gpu_assignments(spec, 4)
        assert err.value.field == "gpus"


def test_gpus_without_cuda_and_bad_combinations_are_one_line_errors(redis_url):
    import torch

    if torch.cuda.device_count():
        pytest.skip("this machine has CUDA: the no-CUDA refusal cannot be seen here")
    runner = CliRunner()
    result = runner.invoke(app, ["worker", "--gpus", "all", "--burst"])
    assert result.exit_code == 2 and "error: gpus: needs CUDA" in result.output, result.output
    result = runner.invoke(app, ["worker", "--gpus", "0", "--processes", "2"])
    assert result.exit_code == 2 and "error: processes:" in result.output, result.output


def test_launcher_gives_each_child_its_device_recycles_clean_exits_and_stops_on_a_failure(monkeypatch, tmp_path):
    """The launcher alone, with a stand-in child program (a few lines of Python instead of a worker)."""
    import oodsynth.worker.process as worker

    log = tmp_path / "starts"
    child = (
        "import os, sys, time; p = sys.argv[1]; open(p, 'a').write(os.environ['CUDA_VISIBLE_DEVICES'] + '\\n'); "
        "n = len(open(p).read().split()); time.sleep(0.2 if n < 5 else 0); sys.exit(0 if n < 5 else 3) "
        "if os.environ['CUDA_VISIBLE_DEVICES'] == '7' else time.sleep(30)"
    )
    monkeypatch.setattr(worker, "CHILD_COMMAND", (sys.executable, "-c", child))
    code = worker.run_worker_processes([str(log)], ["7", "5"], recycle=True, poll_s=0.05)
    starts = log.read_text().split()
    # device 7 was started again after each clean exit until its run saw 5 starts and failed with 3;
    # then device 5's child was stopped, and the launcher ends with the failure's code
    assert code == 3
    assert sorted(starts) == ["5"] + ["7"] * 4, starts
