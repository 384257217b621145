"""decode_job through a real Redis and a real (in-process, non-forking) RQ worker on a tiny SD."""

from __future__ import annotations

import numpy as np
import pytest
import redis
from PIL import Image
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from oodsynth.queue.image_ids import image_id_for, image_seed_for
from oodsynth.store.results import ResultStore
from oodsynth.worker.allowlist import AllowlistWorker

TASK = "oodsynth.worker.decode_job.decode_task"
CLASSES = ["cat", "ship"]


@pytest.fixture
def env(redis_url, tiny_sd, settings_env):
    return settings_env(MODEL=tiny_sd, GPU_BATCH_SIZE=2, DEVICE="cpu")  # 5 images -> batches of 2, 2, 1


def _payload(dataset: str, n: int, model: str, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        v = rng.normal(size=768)
        v *= 0.4 / np.linalg.norm(v)
        vector_id = f"s0:{i}"
        image_id = image_id_for(dataset, vector_id, 0, seed=seed, model=model)
        items.append(
            dict(
                image_id=image_id,
                vector_id=vector_id,
                vector=v.tolist(),
                class_index=i % 2,
                class_name=CLASSES[i % 2],
                seed=image_seed_for(image_id, seed),
                sampler="knn_boundary",
                sampler_params={"k": 5},
                diagnostics={"log_density": -float(i), "id_percentile": 1.0 * i},
            )
        )
    return dict(dataset=dataset, model=model, steps=2, height=64, width=64, output_size=32, items=items)


def _queue(settings) -> Queue:
    conn = redis.Redis.from_url(settings.redis_url)
    return Queue(settings.queue_name, connection=conn, serializer=JSONSerializer)


def _work(queue: Queue) -> None:
    # the product's worker: its pubsub thread wakes each second (plain RQ's can hold a burst run's exit for 60 s)
    AllowlistWorker([queue], connection=queue.connection, serializer=JSONSerializer).work(burst=True)


def test_job_stores_images_and_rows_one_to_one_and_rerun_writes_nothing(env):
    payload = _payload("cifar-ood", 5, str(env.model))
    queue = _queue(env)
    job = queue.enqueue(TASK, payload, job_timeout=600)
    _work(queue)
    job = Job.fetch(job.id, connection=queue.connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FINISHED, job.latest_result().exc_string if job.latest_result() else None
    result = job.return_value()
    assert result["written"] == 5 and result["skipped"] == 0
    assert job.meta["progress"] == {"done": 5, "total": 5}

    store = ResultStore(env.store)
    records = store.records("cifar-ood")
    items = {item["image_id"]: item for item in payload["items"]}
    assert sorted(r.image_id for r in records) == sorted(items)
    assert sorted(r.path for r in records) == sorted(result["images"])
    for r in records:
        item = items[r.image_id]
        assert (r.class_index, r.class_name, r.vector_id, r.seed) == (
            item["class_index"],
            item["class_name"],
            item["vector_id"],
            item["seed"],
        )
        assert r.path == f"cifar-ood/{item['class_name']}/{r.image_id}.png"
        assert r.job_id == job.id and r.model == str(env.model) and r.sampler == "knn_boundary"
        assert r.diagnostics == item["diagnostics"]
        with Image.open(env.store / r.path) as im:
            assert im.size == (32, 32)
    assert store.verify("cifar-ood").ok

    stamps = {p: (env.store / p).stat().st_mtime_ns for p in result["images"]}
    again = queue.enqueue(TASK, payload, job_timeout=600)
    _work(queue)
    again = Job.fetch(again.id, connection=queue.connection, serializer=JSONSerializer)
    assert again.return_value() == {"images": result["images"], "written": 0, "skipped": 5}
    assert again.meta["progress"] == {"done": 5, "total": 5}
    assert len(store.records("cifar-ood")) == 5
    assert stamps == {p: (env.store / p).stat().st_mtime_ns for p in result["images"]}


def test_retry_decodes_only_the_missing_images_with_the_same_pixels(env):
    """A job whose first attempt stored some images: the rerun fills in the rest, reproducibly."""
    from oodsynth.worker.decode_job import decode_task as decode_job

    payload = _payload("partial", 3, str(env.model), seed=1)
    first = dict(payload, items=payload["items"][:1])
    assert decode_job(first)["written"] == 1
    store = ResultStore(env.store)
    early = np.asarray(Image.open(env.store / store.records("partial")[0].path), dtype=np.int16)

    result = decode_job(payload)
    assert (result["written"], result["skipped"]) == (2, 1)
    assert len(store.records("partial")) == 3 and store.verify("partial").ok

    # Decode the first item again (in a batch of 2, not alone): same seed, same pixels.
    other = dict(payload, dataset="partial-again")
    decode_job(other)
    again = np.asarray(Image.open(env.store / store.records("partial-again")[0].path), dtype=np.int16)
    assert np.abs(again - early).max() <= 2


def test_a_job_for_another_model_is_refused(env, tmp_path):
    from oodsynth.worker.decode_job import decode_task as decode_job

    with pytest.raises(ValueError, match="model"):
        decode_job(_payload("other", 1, str(tmp_path / "some-other-model")))
    assert ResultStore(env.store).records("other") == []


def test_bad_payload_fails_with_the_field_named_in_the_failed_registry(env):
    from oodsynth.worker.process import run_worker

    payload = _payload("bad", 1, str(env.model))
    payload["height"] = 60
    queue = _queue(env)
    job = queue.enqueue(TASK, payload, job_timeout=600)
    assert run_worker(burst=True, with_scheduler=False, logging_level="WARNING")
    job = Job.fetch(job.id, connection=queue.connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FAILED
    assert job.id in FailedJobRegistry(queue=queue).get_job_ids()
    error = job.latest_result().exc_string
    assert "height" in error and "multiple of 8" in error
    assert not (env.store / "bad").exists() or ResultStore(env.store).records("bad") == []


IMG2IMG_FAULTS = {  # an img2img payload's init image: outside its init dataset, gone, or a strength without one
    "init_elsewhere": ({"dataset": "real"}, "private/cat/x.png", "is not an image of init dataset 'real'"),
    "init_traversal": ({"dataset": "real"}, "real/../private/x.png", "is not an image of init dataset"),
    "init_missing": (
        {"dataset": "real"},
        "real/cat/gone.png",
        "init image real/cat/gone.png is not in the result store",
    ),
    "strength_alone": (None, None, "only used with init_images"),
}


@pytest.mark.parametrize("fault", ["payload", "model", "dimension", *IMG2IMG_FAULTS])
def test_permanent_failures_are_not_retried(env, tmp_path, fault):
    """Bad payload, another model, wrong dimension, a bad init image: failed registry after one attempt,
    despite Retry(max=3)."""
    payload = _payload(f"noretry-{fault}", 1, str(env.model))
    if fault == "payload":
        payload["height"] = 60
        expected = "multiple of 8"
    elif fault == "model":
        payload["model"] = str(tmp_path / "some-other-model")
        expected = "this worker serves"
    elif fault in IMG2IMG_FAULTS:
        init_images, payload["items"][0]["init_image"], expected = IMG2IMG_FAULTS[fault]
        payload.update(init_images=init_images, strength=0.5)
    else:
        payload["items"][0]["vector"] = payload["items"][0]["vector"][:16]
        expected = "dimension 16"
    queue = _queue(env)
    job = queue.enqueue(TASK, payload, job_timeout=600, retry=Retry(max=3))
    _work(queue)
    job = Job.fetch(job.id, connection=queue.connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FAILED
    assert job.id in FailedJobRegistry(queue=queue).get_job_ids()
    assert len(job.results()) == 1 and job.retries_left == 0
    assert expected in job.latest_result().exc_string
    assert queue.count == 0
    assert ResultStore(env.store).records(f"noretry-{fault}") == []
