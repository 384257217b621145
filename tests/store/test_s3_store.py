"""The result store on a real S3-compatible server (moto's server mode, started here on 127.0.0.1).

Endpoint and credentials reach s3fs through the standard AWS_* variables, as
they do in compose (MinIO) and on GPU hosts; worker processes inherit them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oodsynth.store import results as store_module
from oodsynth.store.results import ImageRecord, ResultStore
from oodsynth.training.outlier_dataset import StoredOutliers

pytestmark = pytest.mark.slow  # a moto S3 server process


def _record(image_id: str, class_index: int = 0, class_name: str = "cat", job_id: str | None = "job-1") -> ImageRecord:
    return ImageRecord(
        image_id=image_id,
        class_index=class_index,
        class_name=class_name,
        vector_id=f"v-{image_id}",
        sampler="knn_boundary",
        seed=7,
        model="tiny",
        prompt="a cat",
        job_id=job_id,
    )


def _image(value: int, size: int = 8) -> Image.Image:
    return Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8))


def _fs():
    import fsspec

    return fsspec.filesystem("s3", use_listings_cache=False)


def test_write_retry_read_verify_on_s3(bucket_url):
    store = ResultStore(bucket_url + "/")  # a trailing slash is the same store
    assert store.url == bucket_url and store.root == bucket_url
    assert store.write_images("ds", [(_record("a"), _image(10)), (_record("b", 1, "sea/lion"), _image(20))]) == [
        True,
        True,
    ]
    # The retry of job-1 (a new process) finds its own rows and adds one; job-2 has its own shard.
    retry = ResultStore(bucket_url)
    assert retry.write_images("ds", [(_record("b", 1, "sea/lion"), _image(99)), (_record("c"), _image(30))]) == [
        False,
        True,
    ]
    assert retry.write_image("ds", _record("d", 2, "dog", job_id="job-2"), _image(40))
    base = bucket_url.removeprefix("s3://")
    assert sorted(_fs().ls(f"{base}/ds/manifest")) == [
        f"{base}/ds/manifest/job-1.jsonl",
        f"{base}/ds/manifest/job-2.jsonl",
    ]
    assert len(_fs().cat_file(f"{base}/ds/manifest/job-1.jsonl").splitlines()) == 3
    assert store.manifest_path("ds") == f"{bucket_url}/ds/manifest"

    assert [r.image_id for r in store.records("ds")] == ["a", "b", "c", "d"]
    assert store.datasets() == ["ds"]
    assert np.asarray(store.open_image("ds/sea_lion/b.png"))[0, 0, 0] == 20  # the first file is kept
    report = store.verify("ds")
    assert report.ok and report.n_records == 4 == report.n_images, report

    # An image with no row is reported; the torch Dataset and the training reader take the URL.
    _fs().pipe_file(f"{base}/ds/cat/stray.png", _fs().cat_file(f"{base}/ds/cat/a.png"))
    assert store.verify("ds").orphans == ["ds/cat/stray.png"]
    outliers = StoredOutliers(bucket_url, "ds", transform=lambda im: np.asarray(im)[0, 0, 0])
    assert len(outliers) == 4 and outliers.targets == [0, 1, 0, 2] and outliers[3] == (40, 2)
    from oodsynth.training.outlier_dataset import outlier_dataset

    tensors = outlier_dataset(bucket_url, ["ds"], image_size=4)
    image, label = tensors[1]
    assert tuple(image.shape) == (3, 4, 4) and label == 1
    with pytest.raises(ValueError, match="datasets"):
        StoredOutliers(bucket_url, "missing")


def test_abandoned_images_on_s3(bucket_url, monkeypatch):
    """S3 cannot lock: an image without a row is recorded by its own job's retry at once, by others only late."""
    store = ResultStore(bucket_url)
    base = bucket_url.removeprefix("s3://")
    png = store_module._png(_image(5))
    # job-1 created 'a' and died before its row; a stranger created 'b' a moment ago and is writing its row now.
    _fs().pipe_file(f"{base}/ds/cat/a.png", png, Metadata={"writer": "job-1"})
    _fs().pipe_file(f"{base}/ds/cat/b.png", png, Metadata={"writer": "job-9"})
    assert store.write_images("ds", [(_record("a"), _image(1)), (_record("b"), _image(2))]) == [True, False]
    assert store.stored_ids("ds") == {"a"} and store.verify("ds").orphans == ["ds/cat/b.png"]
    # Long after, nobody has recorded 'b': its creator is gone, and the next writer adopts it.
    monkeypatch.setattr(store_module, "ADOPT_AFTER_S", -1.0)
    assert store.write_image("ds", _record("b", job_id="job-3"), _image(2)) is True
    assert store.verify("ds").ok and store.stored_ids("ds") == {"a", "b"}


def test_legacy_single_file_manifest_on_s3(bucket_url):
    base = bucket_url.removeprefix("s3://")
    old = _record("x").model_copy(update={"dataset": "old", "path": "old/cat/x.png"})
    _fs().pipe_file(f"{base}/old/cat/x.png", store_module._png(_image(3)))
    _fs().pipe_file(f"{base}/old/manifest.jsonl", (old.model_dump_json() + "\n").encode())
    store = ResultStore(bucket_url)
    assert store.datasets() == ["old"] and [r.image_id for r in store.records("old")] == ["x"]
    assert store.write_image("old", _record("x"), _image(9)) is False  # already in the old manifest
    assert store.write_image("old", _record("y"), _image(9)) is True
    assert [r.image_id for r in store.records("old")] == ["x", "y"] and store.verify("old").ok


_WRITER = """
import sys
import numpy as np
from PIL import Image
from oodsynth.store.results import ImageRecord, ResultStore
url, job, ids = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
store = ResultStore(url)
batch = []
for i in ids:
    rec = ImageRecord(image_id=i, class_index=int(i[1:]) % 3, class_name="c" + str(int(i[1:]) % 3), vector_id="v" + i,
                      sampler="s", seed=7, model="tiny", prompt="p", job_id=job)
    batch.append((rec, Image.fromarray(np.full((16, 16, 3), int(i[1:]), dtype=np.uint8))))
    if len(batch) == 4:
        store.write_images("ds", batch)
        batch = []
store.write_images("ds", batch)
"""


@pytest.mark.slow  # writer processes
def test_two_writer_processes_one_bucket_each_image_once(bucket_url, tmp_path):
    """Two processes (own working folders, nothing shared but the bucket) write overlapping images
    at once, in opposite orders: every image is one object with one row, and the shards merge."""
    ids = [f"i{k:03d}" for k in range(24)]
    procs = []
    for name, order in (("job-a", ids), ("job-b", ids[::-1])):
        local = tmp_path / name
        local.mkdir()
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _WRITER, bucket_url, name, ",".join(order)],
                cwd=local,
                env={**os.environ, "OODSYNTH_HOME": str(local / "home")},
            )
        )
    for p in procs:
        assert p.wait(60) == 0
    store = ResultStore(bucket_url)
    rows = store.manifest_rows("ds")
    assert sorted(r["image_id"] for r in rows) == ids  # one row per image over both shards
    assert {r["job_id"] for r in rows} <= {"job-a", "job-b"}
    assert sorted(r.image_id for r in store.records("ds")) == ids
    report = store.verify("ds")
    assert report.ok and report.n_images == len(ids), report


WORDS = ["cat", "ship", "horse"]  # the session tiny_sd (conftest) knows these words
WORKER = [sys.executable, "-c", "from oodsynth.cli import main; main()", "worker", "--burst", "--no-scheduler"]


@pytest.mark.slow  # two worker processes import torch + diffusers: ~16 s of CPU in all (one torch thread each)
def test_two_rq_workers_on_separate_hosts_share_one_bucket(bucket_url, redis_url, tiny_sd, monkeypatch, tmp_path):
    """Two real `oodsynth worker` processes with separate local roots (OODSYNTH_HOME, working folder)
    drain one queue into one bucket; a re-submitted job (same image ids) is decoded at most once."""
    from rq.job import Job
    from rq.serializers import JSONSerializer

    from oodsynth.config import get_settings
    from oodsynth.queue.enqueue import connect, enqueue_decode
    from oodsynth.queue.payloads import DecodeJob, build_items

    for key, value in {
        "OODSYNTH_MODEL": str(tiny_sd),
        "OODSYNTH_STORE": bucket_url,
        "OODSYNTH_DEVICE": "cpu",
        "OODSYNTH_GPU_BATCH_SIZE": "2",
        "OODSYNTH_JOB_RETRIES": "0",
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    n = 8
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, 768)).astype(np.float32)
    vectors *= 0.38 / np.linalg.norm(vectors, axis=1, keepdims=True)
    decode = dict(steps=2, height=64, width=64, output_size=32)
    items = build_items(
        dataset="multi",
        vectors=vectors,
        class_index=np.arange(n) % 3,
        class_names=WORDS,
        vector_ids=[f"m:{i}" for i in range(n)],
        sampler="inline",
        seed=0,
        decode=decode,
        model=str(tiny_sd),
    )
    job = DecodeJob(dataset="multi", model=str(tiny_sd), items=items, **decode)
    job_ids = enqueue_decode(job, images_per_job=2)  # 4 jobs
    job_ids += enqueue_decode(job.model_copy(update={"items": items[:2]}), images_per_job=2)  # re-submitted

    workers = []
    for host in ("gpu-host-1", "gpu-host-2"):
        local = tmp_path / host
        local.mkdir()
        env = {**os.environ, "OODSYNTH_HOME": str(local / "home"), "OODSYNTH_STORE": bucket_url}
        workers.append(
            subprocess.Popen(WORKER, cwd=local, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        )
    for w in workers:
        _, err = w.communicate(timeout=240)
        assert w.returncode == 0, err[-3000:]
    connection = connect()
    jobs = [Job.fetch(j, connection=connection, serializer=JSONSerializer) for j in job_ids]
    assert [j.get_status() for j in jobs] == ["finished"] * 5
    written = sum(j.return_value()["written"] for j in jobs)
    assert written == n  # the re-submitted images were decoded and stored once

    store = ResultStore(bucket_url)
    base = bucket_url.removeprefix("s3://")
    pngs = [p for p in _fs().find(f"{base}/multi") if p.endswith(".png")]
    assert len(pngs) == n == len(set(pngs))
    rows = store.manifest_rows("multi")
    assert sorted(r["image_id"] for r in rows) == sorted(i.image_id for i in items)  # each image one row
    shards = {Path(p).stem for p in _fs().ls(f"{base}/multi/manifest")}
    assert shards <= set(job_ids) and {r["job_id"] for r in rows} == shards
    report = store.verify("multi")
    assert report.ok and report.n_records == n == report.n_images, report
    with Image.open(_fs().open(f"{base}/{rows[0]['path']}")) as im:
        assert im.size == (32, 32)
