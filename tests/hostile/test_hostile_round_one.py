"""The first hostile run's findings, one test each, against the real app and a real Redis (small caps)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from hostile_helpers import first_error, post_fit
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from oodsynth.api_keys import new_api_key
from oodsynth.config import get_settings
from services.embed_sampler.app import create_app


def test_the_queue_runs_nothing_but_the_job_function(redis_url, tmp_path):
    """A JSON job with func=os.system, written to the queue, ran on the diffusion worker."""
    from oodsynth.worker.process import build_worker

    queue = Queue(get_settings().queue_name, connection=redis.Redis.from_url(redis_url), serializer=JSONSerializer)
    marker = tmp_path / "pwned"
    job = queue.enqueue("os.system", f"touch {marker}")
    build_worker(preload=False).work(burst=True)
    assert not marker.exists()
    job = Job.fetch(job.id, connection=queue.connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FAILED and "not allowed" in job.latest_result().exc_string


def test_with_keys_every_route_but_healthz_needs_one(redis_url, monkeypatch):
    """No authentication on any route."""
    key, entry = new_api_key("read")
    monkeypatch.setenv("OODSYNTH_API_KEYS", entry)
    get_settings.cache_clear()
    with TestClient(create_app(), raise_server_exceptions=False) as api:
        assert api.get("/healthz").status_code == 200
        assert api.get("/fits").status_code == 401
        assert api.get("/fits", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert post_fit(api, headers={"Authorization": f"Bearer {key}"}).status_code == 403  # read scope


def test_amplification_is_bounded_and_nothing_is_queued(api, redis_url):
    """One inline vector with images_per_vector=100000 answered 202 after 149 s; steps=1000 at 2048 squared and
    a 1 MB prompt were accepted."""
    assert post_fit(api).status_code == 201
    inline = {"dataset": "amp", "vectors": [[0.1] * 16], "classes": [0], "fit": "toy"}
    # an ordinary refusal, timed in the same test: an amplifying request must be refused as fast, give or take
    refusals = []
    for _ in range(3):
        start = time.monotonic()
        assert api.post("/generate", json={**inline, "steps": 0}).status_code == 422
        refusals.append(time.monotonic() - start)
    bound = max(0.5, 20 * sorted(refusals)[1])
    for change, field in (
        ({"images_per_vector": 100_000}, "images_per_vector"),
        ({"steps": 1000}, "steps"),
        ({"height": 2048, "width": 2048}, "height"),
        ({"prompt_template": "{token}" + "x" * 20_000}, "prompt_template"),
    ):
        start = time.monotonic()
        r = api.post("/generate", json={**inline, **change})
        took = time.monotonic() - start
        assert took < bound, f"{field}: {took:.2f} s against {bound:.2f} s (20x an ordinary refusal)"
        assert r.status_code == 422 and first_error(r)["loc"] == ["body", field], r.text
    assert Queue(get_settings().queue_name, connection=redis.Redis.from_url(redis_url)).count == 0


@pytest.mark.parametrize("path", ["/jobs/*", "/jobs/%00"])
def test_odd_job_ids_are_404_not_500(api, path):
    """GET /jobs/* and /jobs/%00 answered 500 (ValueError)."""
    r = api.get(path)
    assert r.status_code == 404 and first_error(r)["loc"] == ["path", "job_id"], r.text


def test_a_tiny_keep_fraction_is_a_422_not_an_overflow(api):
    """knn_boundary with a tiny keep_fraction answered 500 (OverflowError)."""
    assert post_fit(api).status_code == 201
    body = {"fit": "toy", "method": "knn_boundary", "n_per_class": 2, "params": {"keep_fraction": 1e-300}}
    r = api.post("/sample", json=body)
    assert r.status_code == 422 and first_error(r)["loc"] == ["body", "params", "keep_fraction"], r.text


@pytest.mark.parametrize("name", ["x" * 100_000, "two\nlines", "rtl\u202eoverride", ".", ".."])
def test_names_are_refused_at_the_door(api, name):
    """Dataset names of 100,000 characters, with newlines or RTL overrides, and fits named '.' and '..' were
    accepted and failed later, in the worker."""
    r = api.post("/generate", json={"dataset": name, "sample_id": "x"})
    assert r.status_code in (413, 422), r.text  # 100,000 characters are over the small JSON body cap
    if len(name) < 1000:
        assert first_error(r)["loc"] == ["body", "dataset"], r.text
        assert post_fit(api, name).status_code == 422


def test_a_sample_request_past_the_vector_cap_is_refused_before_work(api, settings_env):
    """/sample at the default caps passed 15 GB RSS (2,000 per class over 100 classes, vectors in JSON)."""
    settings_env(MAX_VECTORS_PER_SAMPLE=100)  # the small caps of the api fixture stay set
    assert post_fit(api).status_code == 201
    r = api.post("/sample", json={"fit": "toy", "method": "inverse_rejection", "n_per_class": 40})
    assert r.status_code == 422 and first_error(r)["loc"] == ["body", "n_per_class"], r.text


def test_junk_upload_over_the_cap_is_413_before_it_is_read(api):
    """A 1 GiB junk upload was accepted whole (no size limit)."""
    r = post_fit(api, data=np.random.default_rng(0).bytes(300 * 1024))
    assert r.status_code == 413 and first_error(r)["loc"] == ["body"], r.text


def test_a_json_body_over_the_cap_is_413(api):
    """A 50 MB JSON body stalled /healthz for 20 s (large bodies are now capped, and parsed off the loop)."""
    r = api.post("/sample", content=b'{"fit": "' + b"x" * 100_000 + b'"}', headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text


def test_foreign_host_names_are_refused_without_keys(api):
    """A cross-site POST /fits with a foreign Origin and Host was accepted (CSRF, DNS rebinding)."""
    r = post_fit(api, headers={"Host": "evil.example", "Origin": "http://evil.example"})
    assert r.status_code == 403, r.text


def test_job_errors_carry_no_paths_or_tracebacks(redis_url, tmp_path, settings_env):
    """GET /jobs/{id} returned worker tracebacks with install paths."""
    from oodsynth.queue.enqueue import JOB_FUNCTION, job_status
    from oodsynth.worker.process import build_worker

    settings_env(MODEL=str(tmp_path / "no-such-model"))
    queue = Queue(get_settings().queue_name, connection=redis.Redis.from_url(redis_url), serializer=JSONSerializer)
    job = queue.enqueue(JOB_FUNCTION, {"dataset": "d", "model": "/opt/secret/install/path", "items": []})
    build_worker(preload=False).work(burst=True)
    error = job_status(job.id, queue.connection)["error"]
    assert error and "Traceback" not in error and "/opt/secret" not in error and "\n" not in error, error


def test_redis_socket_paths_never_reach_answers(caps, monkeypatch, tmp_path):
    """503s and /healthz showed the Redis socket path."""
    monkeypatch.setenv("OODSYNTH_REDIS_URL", f"unix://{tmp_path}/gone/redis.sock")
    get_settings.cache_clear()
    with TestClient(create_app(), raise_server_exceptions=False) as api:
        for r in (api.get("/healthz"), api.get("/fits")):
            assert r.status_code == 503 and str(tmp_path) not in r.text and "sock" not in r.text, r.text


def test_metrics_labels_come_from_a_fixed_set(api):
    """/metrics took its method label from client input: 5,000 random methods gave 100k series."""
    for i in range(50):
        api.request(f"M{i}HOSTILE", "/fits")
    assert "HOSTILE" not in api.get("/metrics").text


def test_booleans_are_not_integers(api):
    """`seed: false` was accepted as an integer."""
    assert post_fit(api).status_code == 201
    r = api.post("/sample", json={"fit": "toy", "method": "inverse_rejection", "n_per_class": 2, "seed": False})
    assert r.status_code == 422 and first_error(r)["loc"] == ["body", "seed"], r.text


def test_samples_expire(api, redis_url):
    """Each sample was kept for 7 days and fits never expired: Redis held 3.5 GB by the end of a load run."""
    assert post_fit(api).status_code == 201
    r = api.post("/sample", json={"fit": "toy", "method": "inverse_rejection", "n_per_class": 2})
    ttl = redis.Redis.from_url(redis_url).ttl(f"oodsynth:sample:{r.json()['sample_id']}")
    assert 0 < ttl <= get_settings().sample_ttl_s


def test_compose_dashboard_is_pinned_and_json_only():
    """The compose rq-dashboard was an unpinned third-party image that unpickles unless told to use JSON."""
    from pathlib import Path

    import yaml

    compose = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text())
    dash = compose["services"]["dashboard"]
    assert "--json" in dash["command"] and "rq-dashboard==" in dash["build"]["dockerfile_inline"]
    assert "image" not in dash
