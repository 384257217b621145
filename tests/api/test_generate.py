"""POST /generate, GET /jobs/{id}, GET /queue over a real Redis: planning, splitting, refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pydantic
import pytest
import redis
from fastapi.testclient import TestClient
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from oodsynth.bank import FeatureBank
from oodsynth.config import get_settings
from oodsynth.queue.enqueue import JOB_FUNCTION, queue_stats
from oodsynth.queue.payloads import PACKED_VECTOR_PREFIX, DecodeJob, unpack_vector
from oodsynth.worker.allowlist import AllowlistWorker
from services.embed_sampler.app import create_app
from tests.helpers.toy_banks import toy_bank

DIM = 16
ANCHOR_NORMS = np.array([0.35, 0.38, 0.41])


def make_bank(n_per_class: int = 30) -> FeatureBank:
    return toy_bank(3, n_per_class, DIM, anchor_norms=ANCHOR_NORMS, names=["cat", "dog", "sea lion"])


@pytest.fixture
def api(redis_url, settings_env):
    settings_env(IMAGES_PER_JOB=4, MAX_IMAGES_PER_REQUEST=50, MODEL="tiny-test-model")
    with TestClient(create_app()) as client:
        r = client.post(
            "/fits",
            data={"name": "toy", "density": "vmf"},
            files={"file": ("bank.npz", make_bank().to_bytes(), "application/octet-stream")},
        )
        assert r.status_code == 201, r.text
        yield client


def _queue(redis_url) -> Queue:
    return Queue(get_settings().queue_name, connection=redis.Redis.from_url(redis_url), serializer=JSONSerializer)


def _sample(api, n_per_class=3) -> str:
    r = api.post("/sample", json={"fit": "toy", "method": "inverse_rejection", "n_per_class": n_per_class, "seed": 1})
    assert r.status_code == 200, r.text
    return r.json()["sample_id"]


def _payloads(redis_url, job_ids):
    conn = redis.Redis.from_url(redis_url)
    return [Job.fetch(j, connection=conn, serializer=JSONSerializer).args[0] for j in job_ids]


def test_generate_from_sample_splits_and_is_deterministic(api, redis_url):
    sample_id = _sample(api)  # 3 classes x 3 vectors
    body = {
        "sample_id": sample_id,
        "dataset": "toy-out",
        "images_per_vector": 2,
        "steps": 3,
        "height": 64,
        "width": 64,
        "output_size": 32,
        "seed": 5,
    }
    r = api.post("/generate", json=body)
    assert r.status_code == 202, r.text
    out = r.json()
    assert out["dataset"] == "toy-out" and out["n_images"] == 18
    assert len(out["job_ids"]) == math.ceil(18 / 4) == 5
    assert _queue(redis_url).count == 5

    payloads = _payloads(redis_url, out["job_ids"])
    items = [it for p in payloads for it in p["items"]]
    assert [len(p["items"]) for p in payloads] == [4, 4, 4, 4, 2]
    assert all(p["model"] == "tiny-test-model" and p["steps"] == 3 and p["height"] == 64 for p in payloads)
    assert len({it["image_id"] for it in items}) == 18 and len({it["seed"] for it in items}) == 18
    assert {it["vector_id"] for it in items} == {f"{sample_id}:{i}" for i in range(9)}
    assert {it["class_name"] for it in items} == {"cat", "dog", "sea lion"}
    first = items[0]
    assert first["sampler"] == "inverse_rejection" and "eps_percentile" in first["sampler_params"]
    assert set(first["diagnostics"]) >= {"log_density", "id_percentile", "cos_to_mean"}
    assert first["diagnostics"]["knn_distance"] is None  # NaN (no bank) travels as null
    # Each vector keeps its own row; the two repeats of one vector share it.
    assert items[0]["vector"] == items[1]["vector"] != items[2]["vector"]
    # Vectors travel as base64 float32 and read back bit-exact; the worker's schema accepts every payload.
    stored = np.asarray(api.get(f"/samples/{sample_id}").json()["vectors"], dtype=np.float32)
    for it in items:
        row = int(it["vector_id"].rsplit(":", 1)[1])
        assert it["vector"].startswith(PACKED_VECTOR_PREFIX)
        assert np.array_equal(np.asarray(unpack_vector(it["vector"]), dtype=np.float32), stored[row])
    assert all(len(DecodeJob.model_validate(p).items) == len(p["items"]) for p in payloads)

    # The same request again names the same images with the same seeds (retries rewrite, never add).
    again = _payloads(redis_url, api.post("/generate", json=body).json()["job_ids"])
    assert [(it["image_id"], it["seed"]) for p in again for it in p["items"]] == [
        (it["image_id"], it["seed"]) for it in items
    ]

    state = api.get(f"/jobs/{out['job_ids'][-1]}").json()
    assert state == {
        "id": out["job_ids"][-1],
        "status": "queued",
        "progress": {"done": 0, "total": 2},
        "result": None,
        "error": None,
        "dataset": "toy-out",
        "retries_left": get_settings().job_retries,
    }
    stats = api.get("/queue").json()
    (mine,) = [q for q in stats["queues"] if q["name"] == get_settings().queue_name]
    assert mine["queued"] == 10 and mine["started"] == mine["failed"] == 0 and stats["workers"] == []


def test_inline_vectors_rescaled_to_anchor_norm(api, redis_url):
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(3, DIM)) * 5
    r = api.post(
        "/generate", json={"vectors": vectors.tolist(), "classes": [2, 0, 2], "fit": "toy", "dataset": "inline"}
    )
    assert r.status_code == 202, r.text
    (payload,) = _payloads(redis_url, r.json()["job_ids"])
    norms = [np.linalg.norm(unpack_vector(it["vector"])) for it in payload["items"]]
    np.testing.assert_allclose(norms, ANCHOR_NORMS[[2, 0, 2]], rtol=1e-5)
    assert [it["class_name"] for it in payload["items"]] == ["sea lion", "cat", "sea lion"]
    assert all(it["sampler"] == "inline" for it in payload["items"])
    # A tiny (but sane) scale is rescaled too, in float64 (no overflow, no underflow).
    r = api.post(
        "/generate",
        json={"vectors": (vectors * 1e-5).tolist(), "classes": [2, 0, 2], "fit": "toy", "dataset": "inline"},
    )
    assert r.status_code == 202, r.text
    (payload,) = _payloads(redis_url, r.json()["job_ids"])
    np.testing.assert_allclose(
        [np.linalg.norm(unpack_vector(it["vector"])) for it in payload["items"]], ANCHOR_NORMS[[2, 0, 2]], rtol=1e-5
    )


def _image_ids(api, redis_url, body) -> list[str]:
    r = api.post("/generate", json=body)
    assert r.status_code == 202, r.text
    return [it["image_id"] for p in _payloads(redis_url, r.json()["job_ids"]) for it in p["items"]]


@pytest.mark.parametrize("source", ["sample", "inline"])
def test_image_ids_follow_seed_settings_and_model(api, redis_url, settings_env, source):
    """Same request -> same ids (idempotent retries); new seed/settings/model -> new ids (never skipped as stored)."""
    if source == "sample":
        base = {"sample_id": _sample(api), "dataset": "ids", "seed": 5, "steps": 3}
    else:
        vectors = np.random.default_rng(4).normal(size=(2, DIM)).tolist()
        base = {"vectors": vectors, "classes": [0, 1], "fit": "toy", "dataset": "ids", "seed": 5, "steps": 3}
    ids = _image_ids(api, redis_url, base)
    assert _image_ids(api, redis_url, base) == ids
    changes = [
        {"seed": 6},
        {"seed": None},
        {"steps": 4},
        {"guidance_scale": 3.0},
        {"prompt_template": "A photo of a {token}"},
        {"height": 64},
        {"width": 64},
        {"output_size": 64},
        {"scheduler": "ddim"},
    ]
    seen = {tuple(ids)}
    for change in changes:
        body = {k: v for k, v in {**base, **change}.items() if v is not None}
        other = _image_ids(api, redis_url, body)
        assert len(other) == len(ids) and not set(other) & set(ids), change
        seen.add(tuple(other))
    assert len(seen) == len(changes) + 1
    settings_env(MODEL="another-model")
    assert not set(_image_ids(api, redis_url, base)) & set(ids)


BAD = [
    ({"sample_id": "0123456789abcdef0123456789abcdef"}, 404, ["body", "sample_id"]),
    ({"images_per_vector": 0}, 422, ["body", "images_per_vector"]),
    ({"images_per_vector": 6}, 422, ["body", "images_per_vector"]),  # 9 x 6 = 54 > 50
    ({"height": 100}, 422, ["body", "height"]),
    ({"width": 60}, 422, ["body", "width"]),
    ({"steps": 0}, 422, ["body", "steps"]),
    ({"dataset": ""}, 422, ["body", "dataset"]),
    ({"dataset": "../etc"}, 422, ["body", "dataset"]),
    ({"scheduler": "magic"}, 422, ["body", "scheduler"]),
    ({"prompt_template": "no placeholder"}, 422, ["body", "prompt_template"]),
    ({"vectors": [[0.1] * DIM], "classes": [0]}, 422, ["body", "sample_id"]),  # both sources
    ({"fit": "toy"}, 422, ["body", "fit"]),  # fit only goes with inline vectors
    (
        {"sample_id": None, "vectors": [[0.1] * DIM, [float("nan")] * DIM], "classes": [0, 1], "fit": "toy"},
        422,
        ["body", "vectors", 1],
    ),
    ({"sample_id": None, "vectors": [[0.1] * (DIM - 1)], "classes": [0], "fit": "toy"}, 422, ["body", "vectors"]),
    ({"sample_id": None, "vectors": [[0.1] * DIM], "classes": [3], "fit": "toy"}, 422, ["body", "classes", 0]),
    ({"sample_id": None, "vectors": [[0.1] * DIM], "classes": [0, 1], "fit": "toy"}, 422, ["body", "classes"]),
    ({"sample_id": None, "vectors": [[0.1] * DIM], "classes": [0], "fit": "nope"}, 404, ["body", "fit"]),
    ({"sample_id": None, "vectors": [], "classes": []}, 422, ["body", "vectors"]),
    # Inline class indices are bounded by the schema and by the fit (no names built for 1e9 classes).
    ({"sample_id": None, "vectors": [[0.1] * DIM], "classes": [2**70], "fit": "toy"}, 422, ["body", "classes", 0]),
    ({"sample_id": None, "vectors": [[0.1] * DIM], "classes": [2**31], "fit": "toy"}, 422, ["body", "classes", 0]),
    ({"sample_id": None, "vectors": [[0.1] * DIM], "classes": [-1], "fit": "toy"}, 422, ["body", "classes", 0]),
    (
        {"sample_id": None, "vectors": [[0.1] * DIM] * 2, "classes": [0, 10**9], "fit": "toy"},
        422,
        ["body", "classes", 1],
    ),
    # Inline vectors need a fit (dimension, class names, anchor norms).
    ({"sample_id": None, "vectors": [[0.1] * DIM], "classes": [0]}, 422, ["body", "fit"]),
    ({"sample_id": None, "vectors": [[1.0, 2.0]], "classes": [10**9]}, 422, ["body", "fit"]),
    ({"sample_id": None, "vectors": [[0.1] * DIM], "classes": [0], "class_names": ["a"]}, 422, ["body", "class_names"]),
    # Absurd norms: overflowing, huge, vanishing.
    ({"sample_id": None, "vectors": [[1e38] * DIM], "classes": [0], "fit": "toy"}, 422, ["body", "vectors", 0]),
    (
        {"sample_id": None, "vectors": [[0.1] * DIM, [1e200] * DIM], "classes": [0, 1], "fit": "toy"},
        422,
        ["body", "vectors", 1],
    ),
    ({"sample_id": None, "vectors": [[1e-30] * DIM], "classes": [0], "fit": "toy"}, 422, ["body", "vectors", 0]),
    ({"sample_id": None}, 422, ["body", "sample_id"]),  # neither source
    # img2img: a strength goes with init images, in (0, 1]; the init dataset must hold images of the classes.
    ({"strength": 0.5}, 422, ["body", "strength"]),
    ({"init_images": {"dataset": "toy-real"}, "strength": 1.5}, 422, ["body", "strength"]),
    ({"init_images": {"dataset": "toy-real"}}, 422, ["body", "init_images", "dataset"]),  # not in the store
]


def test_bad_input_names_the_field_and_enqueues_nothing(api, redis_url):
    sample_id = _sample(api)
    base = {"sample_id": sample_id, "dataset": "toy-out"}
    for change, status, loc in BAD:
        body = {k: v for k, v in {**base, **change}.items() if v is not None}
        # NaN is not JSON: send it the way a Python client would (json.dumps writes NaN literals).
        r = api.post("/generate", content=json.dumps(body), headers={"content-type": "application/json"})
        assert r.status_code == status, (change, r.text)
        locs = [d["loc"] for d in r.json()["detail"]]
        assert loc in locs, (change, locs)
        assert r.json()["detail"][0]["msg"]
    assert _queue(redis_url).count == 0
    assert not redis.Redis.from_url(redis_url).keys("rq:job:*")
    assert api.get("/jobs/no-such-job").status_code == 404


def test_failed_job_reports_error_text(api, redis_url, settings_env):
    """A job whose payload the worker rejects ends failed with the validation text, not a log line."""
    settings_env(JOB_RETRIES=0)

    queue = _queue(redis_url)
    job = queue.enqueue(
        JOB_FUNCTION, {"dataset": "a/b", "model": "m", "items": []}, meta={"progress": {"done": 0, "total": 0}}
    )
    # the product's worker: its pubsub thread wakes each second (plain RQ's can hold a burst run's exit for 60 s)
    AllowlistWorker([queue], connection=queue.connection, serializer=JSONSerializer).work(burst=True)
    state = api.get(f"/jobs/{job.id}").json()
    assert state["status"] == "failed" and state["error"].startswith(
        "oodsynth.errors.InputError: dataset: 'a/b' must be"
    )
    assert "Traceback" not in state["error"] and "\n" not in state["error"]  # one line; the traceback stays in the logs
    (mine,) = [q for q in queue_stats(queue.connection)["queues"] if q["name"] == queue.name]
    assert mine["failed"] == 1 and mine["queued"] == 0


def test_packed_vectors_round_trip_exactly_and_bad_text_names_the_vector():
    """The queue's vector text (base64 float32) reads back bit-exact; corrupt text or a NaN inside it fails the
    worker's validation at that item's vector, as a list payload would."""
    from oodsynth.queue.payloads import DecodeItem, pack_vector

    v = np.random.default_rng(0).normal(size=768).astype(np.float32)
    assert np.array_equal(np.asarray(unpack_vector(pack_vector(v)), dtype=np.float32), v)
    base = dict(image_id="a", vector_id="s:0", class_index=0, class_name="cat", seed=1, sampler="inline")
    assert DecodeItem(**base, vector=pack_vector(v)).vector == DecodeItem(**base, vector=v.tolist()).vector
    bad_nan = v.copy()
    bad_nan[5] = np.nan
    for text, message in (
        (pack_vector(v)[10:], "starts with"),
        (pack_vector(v)[:-3] + "!!!", "not base64"),
        (PACKED_VECTOR_PREFIX + "AAAAAAA=", "whole number of float32"),
        (pack_vector(bad_nan), "finite"),
    ):
        with pytest.raises(pydantic.ValidationError, match=message) as info:
            DecodeItem(**base, vector=text)
        assert info.value.errors()[0]["loc"][0] == "vector"
    with pytest.raises(pydantic.ValidationError) as info:
        DecodeItem(**base, vector=pack_vector(bad_nan))
    assert info.value.errors()[0]["loc"] == ("vector", 5)


def test_an_items_packed_vector_is_its_current_vector():
    """``packed_vector`` gives the text packed from the float32 row an item was built from, and follows the
    vector when it is replaced or changed in place afterwards."""
    from oodsynth.queue.payloads import build_items, pack_vector

    rows = np.random.default_rng(1).normal(size=(2, 768)).astype(np.float32)
    items = build_items(
        dataset="d",
        vectors=rows,
        class_index=np.array([0, 1]),
        class_names=["cat", "dog"],
        vector_ids=["s:0", "s:1"],
        sampler="inline",
        images_per_vector=2,
    )
    assert [item.packed_vector() for item in items] == [pack_vector(rows[i // 2]) for i in range(4)]
    items[0].vector[3] = 0.5
    items[1].vector = rows[1].tolist()
    assert items[0].packed_vector() == pack_vector(items[0].vector) != pack_vector(rows[0])
    assert items[1].packed_vector() == pack_vector(rows[1])
    assert np.asarray(unpack_vector(items[0].packed_vector()), dtype=np.float32)[3] == np.float32(0.5)
