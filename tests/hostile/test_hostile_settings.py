"""Round three, settings and odd state: checked at start and at use, junk in Redis, non-finite fits, masked secrets."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from hostile_helpers import bank_members, first_error, npz_of, post_fit

from oodsynth.config import get_settings
from oodsynth.errors import Unavailable
from oodsynth.redact import redact_url
from oodsynth.service.sampling import blamed_field
from services.embed_sampler.app import create_app
from tests.helpers.paths import REPO


@pytest.mark.parametrize("value", ["s3:/bucket/prefix", "s3:bucket/prefix", "S3:/b", "https:/host/x"])
def test_a_store_url_missing_a_slash_is_refused(settings_env, value):
    """``s3:/bucket/prefix`` (one slash) silently became a local folder of that name."""
    with pytest.raises(Unavailable, match="two slashes") as caught:
        settings_env(STORE=value)
    assert caught.value.field == "OODSYNTH_STORE"
    get_settings.cache_clear()


def test_a_local_folder_with_a_colon_later_is_still_a_folder(settings_env, tmp_path):
    assert str(settings_env(STORE=tmp_path / "a:b").store).endswith("a:b")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_plain_uvicorn_refuses_to_start_with_a_bad_setting_like_serve(tmp_path):
    """Started by plain uvicorn with a bad bucket, every route (even /healthz) answered 500."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OODSYNTH_STORE": "s3://Bad_Bucket/x"}
    cmd = [sys.executable, "-m", "uvicorn", "services.embed_sampler.app:app", "--port", str(_free_port())]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "OODSYNTH_STORE" in out.stderr and "bucket name" in out.stderr, out.stderr[-2000:]
    serve = [str(Path(sys.executable).with_name("oodsynth")), "serve", "--port", str(_free_port())]
    out = subprocess.run(serve, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "error: OODSYNTH_STORE:" in out.stderr, out.stderr[-2000:]


def test_an_unreachable_s3_store_is_503_on_the_gallery_and_healthz_stays_up(caps, settings_env, monkeypatch):
    """An unreachable S3 endpoint gave the gallery 500, not 503."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    for key, value in {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # one try: the test need not wait out botocore's back-off
    settings_env(STORE="s3://unreachable-bucket/p")
    with TestClient(create_app(), raise_server_exceptions=False) as api:
        for path in ("/datasets/any/gallery", "/datasets/any/images/cat/x.png"):
            r = api.get(path)
            assert r.status_code == 503, r.text
            assert first_error(r)["loc"] == ["store"] and int(r.headers["Retry-After"]) > 0
            assert "unreachable-bucket" not in r.text or "127.0.0.1" not in r.text
        assert api.get("/healthz").status_code == 200
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # the cached filesystem keeps the dead endpoint: no later test gets it


def test_queue_survives_junk_in_redis(api, redis_url):
    """One non-UTF-8 queue name or a junk worker hash in Redis gave ``/queue`` 500."""
    client = redis.Redis.from_url(redis_url)
    client.sadd("rq:queues", b"rq:queue:\xff\xfe", b"not-a-queue-key", b"rq:queue:" + b"q" * 5000)
    client.sadd("rq:workers", b"rq:worker:junk", b"rq:worker:\xff", b"nonsense")
    client.hset(b"rq:worker:junk", mapping={b"birth": b"yesterday", b"last_heartbeat": b"\xff", b"pid": b"x"})
    client.hset(b"rq:worker:junk", mapping={b"queues": b"\xff,\x00", b"state": b"\xfe", b"current_job": b"\xff"})
    client.set(b"rq:worker:\xff", b"a string, not a hash")
    client.lpush("oodsynth:refused-jobs", b"not json", b"\xff")
    started = f"rq:wip:{get_settings().queue_name}"
    client.zadd(started, {b"\xff\xfe": 1, b"nocolon": 1, b"a:b:c": 5, b"x" * 3000: 1, b"job:exec": 1e12})
    r = api.get("/queue")
    assert r.status_code == 200, r.text
    assert not set(client.zrange(started, 0, -1)) & {b"\xff\xfe", b"nocolon", b"a:b:c", b"x" * 3000}
    assert "default" in {q["name"] for q in r.json()["queues"]} or r.json()["queues"]


@pytest.mark.parametrize("field, value", [("anchors.npy", 3e38), ("features.npy", 3e38), ("anchors.npy", np.inf)])
def test_non_finite_or_overflowing_fits_are_422(api, field, value):
    """Anchors of 3e38 were stored, and /sample answered 200 with every vector null."""
    members = bank_members()
    array = np.array(members[field], dtype=np.float32)
    array[0] = value
    r = post_fit(api, "huge", npz_of(bank_members(**{field: array})))
    assert r.status_code == 422, r.text
    assert first_error(r)["loc"][-1] == field.removesuffix(".npy") or field.removesuffix(".npy") in str(
        first_error(r)["loc"]
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis://:p@ss@redis:6379/0",
        "redis://user:p@ss/w:rd@redis:6379/0",
        "redis://:a@b@c@redis:6379",
        "http://key:s3cr@t@minio:9000",
        "unix:///run/redis.sock?password=p@ss",
    ],
)
def test_a_password_with_at_signs_is_masked_whole(url):
    """A password containing ``@`` printed half-masked."""
    shown = redact_url(url)
    assert "ss" not in shown.replace("unix:", "") or "***" in shown
    for fragment in ("p@ss", "ss@", "w:rd", "a@b", "b@c", "s3cr", "t@minio"):
        assert fragment not in shown, shown
    assert "***" in shown


def test_sampler_errors_name_real_fields():
    """Some errors named fields that do not exist (``params.features``, ``params.X``)."""
    params = {"k": 5, "sigma": 1.0}
    assert blamed_field("k", params) == "params.k"
    assert blamed_field("X", params) == "params"
    assert blamed_field("features", params) == "fit"
    assert blamed_field("bank", params) == "fit"
    assert blamed_field("n_per_class", params) == "n_per_class"
    assert blamed_field(None, params) == "params"


def test_a_bank_the_density_cannot_fit_blames_the_array_not_density(api):
    """A zero-norm feature row answered 422 naming ``density``, a form field the caller had right."""
    features = np.array(bank_members()["features.npy"])
    features[0] = 0
    r = post_fit(api, "zero", npz_of(bank_members(**{"features.npy": features})))
    assert r.status_code == 422 and first_error(r)["loc"] == ["body", "file", "features"], r.text
