"""Hostile requests get a clear 4xx/503, never a 500, a hang or a leaked path; work per request is bounded."""

from __future__ import annotations

import io
import os
import time
import zipfile

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from oodsynth.config import get_settings
from services.embed_sampler.app import create_app
from services.embed_sampler.state import get_redis_dep
from tests.helpers.servers import wait_healthy
from tests.helpers.toy_banks import toy_bank

# Proposals concentrated at the class mean (temperature at its bound) can never fall below the lowest ID
# density (eps_percentile 0): the sampler runs until its time budget stops it.
SPIN = {"eps_percentile": 0, "temperature": 1e-3, "max_rounds": 100_000, "batch": 16_384}


@pytest.fixture
def limits(redis_url, monkeypatch):
    for name, value in {
        "MAX_REQUEST_BYTES": 64 * 1024,
        "MAX_UPLOAD_BYTES": 256 * 1024,
        "MAX_BANK_BYTES": 128 * 1024,
        "SAMPLE_TIME_BUDGET_S": 1.0,
        "MAX_DECODE_STEPS": 100,
        "MAX_DECODE_PIXELS": 512 * 512,
        "MAX_JSON_VALUES": 1000,
    }.items():
        monkeypatch.setenv(f"OODSYNTH_{name}", str(value))
    get_settings.cache_clear()


@pytest.fixture
def api(limits):
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        yield client


def post_fit(api, name="toy", data: bytes | None = None):
    data = toy_bank().to_bytes() if data is None else data
    return api.post("/fits", data={"name": name}, files={"file": ("bank.npz", data, "application/octet-stream")})


def first_error(r) -> dict:
    return r.json()["detail"][0]


@pytest.fixture
def sample_id(api) -> str:
    assert post_fit(api).status_code == 201
    r = api.post("/sample", json={"fit": "toy", "method": "inverse_rejection", "n_per_class": 2, "seed": 0})
    return r.json()["sample_id"]


@pytest.mark.parametrize("path", ["/jobs/*", "/jobs/%00", "/jobs/a%20b", "/jobs/" + "x" * 5000])
def test_odd_job_ids_are_404(api, path):
    r = api.get(path)
    assert r.status_code == 404 and first_error(r)["loc"] == ["path", "job_id"], r.text


def test_tiny_keep_fraction_is_answered(api):
    assert post_fit(api).status_code == 201
    r = api.post(
        "/sample",
        json={
            "fit": "toy",
            "method": "knn_boundary",
            "n_per_class": 3,
            "seed": 0,
            "params": {"keep_fraction": 1e-6, "k": 5, "select": 5, "n_draws": 20},
        },
    )
    assert r.status_code == 200 and r.json()["n"] == 9, r.text
    r = api.post(
        "/sample",
        json={"fit": "toy", "method": "knn_boundary", "n_per_class": 3, "params": {"keep_fraction": 1e-300}},
    )
    assert r.status_code == 422 and first_error(r)["loc"] == ["body", "params", "keep_fraction"], r.text


@pytest.mark.parametrize(
    "route,body,field",
    [
        ("/sample", {"fit": "toy", "method": "inverse_rejection", "n_per_class": 2, "seed": False}, "seed"),
        ("/sample", {"fit": "toy", "method": "inverse_rejection", "n_per_class": "2"}, "n_per_class"),
        (
            "/sample",
            {"fit": "toy", "method": "inverse_rejection", "n_per_class": 2, "include_vectors": "yes"},
            "include_vectors",
        ),
        ("/generate", {"dataset": "d", "sample_id": "0" * 32, "seed": False}, "seed"),
        ("/generate", {"dataset": "d", "sample_id": "0" * 32, "steps": 2.0}, "steps"),
    ],
)
def test_strict_types(api, route, body, field):
    r = api.post(route, json=body)
    assert r.status_code == 422 and first_error(r)["loc"] == ["body", field], r.text


@pytest.mark.parametrize("name", [".", "..", "a\nb", "rtl\u202eevil", "x" * 129, "a/b"])
def test_bad_fit_names(api, name):
    r = post_fit(api, name)
    assert r.status_code == 422 and first_error(r)["loc"] == ["body", "name"], r.text


@pytest.mark.parametrize("dataset", [".", "..", "a\nb", "rtl\u202eevil", "x" * 200])
def test_bad_dataset_names(api, sample_id, dataset):
    r = api.post("/generate", json={"dataset": dataset, "sample_id": sample_id})
    assert r.status_code == 422 and first_error(r)["loc"] == ["body", "dataset"], r.text


@pytest.mark.parametrize(
    "change,field,text",
    [
        ({"steps": 101}, "steps", "above the cap of 100"),
        ({"height": 1024, "width": 1024}, "height", "the cap of 262144"),
        ({"prompt_template": "{token} " + "x" * 2000}, "prompt_template", "at most 1000 characters"),
    ],
)
def test_decode_bounds(api, sample_id, change, field, text):
    r = api.post("/generate", json={"dataset": "d", "sample_id": sample_id, **change})
    assert r.status_code == 422 and first_error(r)["loc"] == ["body", field] and text in first_error(r)["msg"], r.text


def test_generate_enqueues_in_a_constant_number_of_round_trips(api, sample_id, redis_url, monkeypatch):
    """The same few Redis round trips for 6 images in 6 jobs as for 600 images in 600 jobs."""
    monkeypatch.setenv("OODSYNTH_IMAGES_PER_JOB", "1")
    get_settings.cache_clear()
    counted = CountingRedis.from_url(redis_url)
    api.app.dependency_overrides[get_redis_dep] = lambda: counted
    trips = {}
    for per_vector in (1, 100):
        counted.trips = 0
        r = api.post(
            "/generate",
            json={
                "dataset": f"d{per_vector}",
                "sample_id": sample_id,
                "images_per_vector": per_vector,
                "steps": 2,
                "height": 64,
                "width": 64,
            },
        )
        assert r.status_code == 202 and len(r.json()["job_ids"]) == 6 * per_vector, r.text
        trips[per_vector] = counted.trips
    assert trips[100] <= trips[1] <= 5, trips  # not one per job


class CountingRedis(redis.Redis):
    """A real client that counts its round trips: single commands and pipeline executions."""

    trips = 0

    def execute_command(self, *args, **options):
        self.trips += 1
        return super().execute_command(*args, **options)

    def pipeline(self, transaction=True, shard_hint=None):
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        def counted_execute(*a, **kw):
            self.trips += 1
            return execute(*a, **kw)

        pipe.execute = counted_execute
        return pipe


def test_json_body_over_the_cap_is_413(api):
    body = b'{"fit": "' + b"x" * 70_000 + b'"}'
    r = api.post("/sample", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "65536 bytes" in first_error(r)["msg"], r.text
    r = api.post(
        "/sample",
        content=iter([body[:40_000], body[40_000:]]),  # streamed: no Content-Length
        headers={"content-type": "application/json"},
    )
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and "65536 bytes" in first_error(r)["msg"], r.text


def test_upload_over_the_cap_is_413_and_the_fit_is_not_stored(api):
    r = post_fit(api, data=np.random.default_rng(0).bytes(300 * 1024))
    assert r.status_code == 413, r.text
    assert api.get("/fits").json() == {"fits": []}


def test_npz_that_unpacks_past_the_cap_is_refused_before_decompressing(api):
    bank = toy_bank()
    buf = io.BytesIO()  # 8 MB of zeros compress to a few KB: a small upload, a large array
    np.savez_compressed(
        buf,
        features=np.zeros((2**17, 16), np.float32),
        labels=bank.labels,
        anchors=bank.anchors,
        class_names=bank.class_names,
    )
    assert len(buf.getvalue()) < 64 * 1024
    r = post_fit(api, data=buf.getvalue())
    assert r.status_code == 413 and first_error(r)["loc"] == ["body", "file"], r.text
    assert "OODSYNTH_MAX_BANK_BYTES" in first_error(r)["msg"] and "features" in first_error(r)["msg"]


def test_npy_header_claiming_a_huge_shape_is_refused(api):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 768)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("features.npy", header.getvalue() + b"\0" * 64)
        for name in ("labels", "anchors", "class_names"):
            member = io.BytesIO()
            np.save(member, np.zeros(3))
            z.writestr(f"{name}.npy", member.getvalue())
    r = post_fit(api, data=buf.getvalue())
    assert r.status_code == 422 and first_error(r)["loc"] == ["body", "file", "features"], r.text


def test_sampler_time_budget(api):
    """A hopeless rejection sampler used to spin for minutes: now a 503 within the budget, and no thread keeps working."""
    assert post_fit(api).status_code == 201
    start = time.monotonic()
    r = api.post(
        "/sample",
        json={
            "fit": "toy",
            "method": "inverse_rejection",
            "n_per_class": 50,
            "seed": 0,
            "params": SPIN,
            "include_vectors": False,
        },
    )
    took = time.monotonic() - start
    assert r.status_code == 503 and first_error(r)["loc"] == ["sample_time_budget_s"], r.text
    assert "time budget of 1 s" in first_error(r)["msg"] and took < 5, took
    cpu = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - cpu < 0.2  # nothing left spinning in this process


def test_no_paths_or_tracebacks_when_redis_is_down(limits, monkeypatch, tmp_path):
    monkeypatch.setenv("OODSYNTH_REDIS_URL", f"unix://{tmp_path}/gone/redis.sock")
    get_settings.cache_clear()
    with TestClient(create_app(), raise_server_exceptions=False) as api:
        for r in (api.get("/healthz"), api.get("/fits"), api.get("/jobs/abc")):
            assert r.status_code == 503, r.text
            assert str(tmp_path) not in r.text and "sock" not in r.text and "Traceback" not in r.text


def test_metrics_labels_come_from_a_fixed_set(api):
    for i in range(20):
        api.request(f"X{i}WEIRD", f"/random/{i}")
    text = api.get("/metrics").text
    assert "WEIRD" not in text and "/random/" not in text
    assert 'method="other",route="unmatched"' in text


def test_a_sample_too_large_for_json_is_refused_before_sampling_and_a_stored_one_is_kept_for_npz(api, redis_url):
    assert post_fit(api).status_code == 201
    r = api.post("/sample", json={"fit": "toy", "method": "inverse_rejection", "n_per_class": 30, "seed": 0})
    assert r.status_code == 422 and first_error(r)["loc"] == ["body", "include_vectors"], r.text
    assert "above the cap of 1000" in first_error(r)["msg"] and "nothing was sampled" in first_error(r)["msg"]
    assert not redis.Redis.from_url(redis_url).keys("oodsynth:sample:*")
    r = api.post(
        "/sample",
        json={"fit": "toy", "method": "inverse_rejection", "n_per_class": 30, "seed": 0, "include_vectors": False},
    )
    sample_id = r.json()["sample_id"]
    r = api.get(f"/samples/{sample_id}")
    assert r.status_code == 422 and f"sample {sample_id} is kept" in first_error(r)["msg"], r.text
    r = api.get(f"/samples/{sample_id}?format=npz")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npz"
    assert api.get(f"/samples/{sample_id}?include_vectors=false").json()["n"] == 90


def test_samples_expire_and_stay_within_a_byte_budget(api, redis_url, monkeypatch):
    from oodsynth.state.samples import SampleRegistry

    assert post_fit(api).status_code == 201
    body = {"fit": "toy", "method": "inverse_rejection", "n_per_class": 10, "include_vectors": False}
    first = api.post("/sample", json={**body, "seed": 0}).json()["sample_id"]
    size = int(redis.Redis.from_url(redis_url).hget("oodsynth:samples:bytes", first))
    monkeypatch.setenv("OODSYNTH_SAMPLE_BUDGET_BYTES", str(3 * size + size // 2))  # room for 3 samples
    monkeypatch.setenv("OODSYNTH_SAMPLE_TTL_S", "600")
    get_settings.cache_clear()
    ids = [first] + [api.post("/sample", json={**body, "seed": s}).json()["sample_id"] for s in range(1, 5)]
    kept = [api.get(f"/samples/{i}?include_vectors=false").status_code for i in ids]
    # The two evicted answered 404 before issue 32; now 410 Gone, saying they were evicted for the (per-tenant) budget.
    assert kept == [410, 410, 200, 200, 200]
    client = redis.Redis.from_url(redis_url)
    assert 590 <= client.ttl(SampleRegistry.key(ids[-1])) <= 600
    assert sum(int(v) for v in client.hvals("oodsynth:samples:bytes")) <= 3 * size + size // 2


@pytest.mark.slow  # kills the embedded Redis process
def test_a_running_api_brings_its_embedded_redis_back(monkeypatch):
    """The embedded Redis is killed under a running API: the next request restarts it on the same AOF data."""
    import oodsynth.state.redis_conn as redis_conn

    monkeypatch.setenv("OODSYNTH_REDIS_URL", "")  # no Redis configured: the API starts its own
    monkeypatch.setattr(redis_conn, "_embedded", None)
    get_settings.cache_clear()
    try:
        with TestClient(create_app()) as api:
            assert post_fit(api).status_code == 201
            first = redis_conn._embedded
            time.sleep(1.2)  # appendfsync everysec: let the AOF reach the disk
            first.process.kill()
            first.process.wait()
            r = api.get("/fits")
            assert r.status_code == 200 and r.json() == {"fits": ["toy"]}, r.text
            assert redis_conn._embedded.process.pid != first.process.pid
    finally:
        if redis_conn._embedded is not None:
            redis_conn._embedded.stop()


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def seconds_until_closed(conn) -> float:
    """Seconds until the server closes ``conn`` (reads and drops anything it sends first)."""
    start = time.monotonic()
    while conn.recv(4096):
        pass
    return time.monotonic() - start


@pytest.mark.slow  # an `oodsynth serve` process
def test_serve_binds_locally_stops_work_for_gone_clients_and_on_sigterm(tmp_path, monkeypatch):
    """`oodsynth serve` without keys binds 127.0.0.1; a trickling body gets 408 and trickling headers a closed
    connection (also on a kept-alive one); a spinning /sample stops
    when its client goes away; SIGTERM during another one ends the server in bounded time."""
    import signal
    import socket
    import subprocess
    import sys
    import threading

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "OODSYNTH_HOME": str(tmp_path / "home"),
        "OODSYNTH_SAMPLE_TIME_BUDGET_S": "4",
        "OODSYNTH_BODY_TIMEOUT_S": "2",
        "OODSYNTH_HEADER_TIMEOUT_S": "1",
    }
    env.pop("OODSYNTH_REDIS_URL", None)
    env.pop("OODSYNTH_API_KEYS", None)
    code = "from oodsynth.cli import app; app()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--host", "0.0.0.0", "--port", str(port), "--graceful-timeout", "2"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, proc, "serve")
        files = {"file": ("b.npz", toy_bank().to_bytes(), "application/octet-stream")}
        assert httpx.post(f"{base}/fits", data={"name": "toy"}, files=files, timeout=30).status_code == 201
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:  # a body that trickles in
            slow.sendall(
                b"POST /sample HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"fit":'
            )
            start = time.monotonic()
            answer = b""
            while b"OODSYNTH_BODY_TIMEOUT_S" not in answer and (chunk := slow.recv(4096)):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408") and b"OODSYNTH_BODY_TIMEOUT_S" in answer, answer
            assert 1.8 < time.monotonic() - start < 5  # its complete headers stopped the 1 s header deadline
        for opening in (b"", b"GET /healthz HTTP/1.1\r\nHost: 127"):  # silent, then trickling headers: closed
            with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
                slow.sendall(opening)
                assert 0.8 < seconds_until_closed(slow) < 3
        with socket.create_connection(("127.0.0.1", port), timeout=10) as kept:  # and the next request's headers
            kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert kept.recv(4096).startswith(b"HTTP/1.1 200")
            time.sleep(0.5)
            kept.sendall(b"GET /healthz HTTP/1.1\r\n")
            assert 0.8 < seconds_until_closed(kept) < 3  # uvicorn's own keep-alive timeout is 5 s

        spin = {"fit": "toy", "method": "inverse_rejection", "n_per_class": 50, "params": SPIN}
        with pytest.raises(httpx.TimeoutException):  # the client gives up after 1 s and closes its connection
            httpx.post(f"{base}/sample", json=spin, timeout=1.0)
        time.sleep(1.0)
        before = cpu_seconds(proc.pid)
        time.sleep(
            1.5
        )  # ends 3.5 s after the request, inside its 4 s budget: only a cancelled sampler leaves the server idle
        assert cpu_seconds(proc.pid) - before < 0.15
        threading.Thread(target=lambda: httpx.post(f"{base}/sample", json=spin, timeout=30), daemon=True).start()
        time.sleep(1.0)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)  # graceful 2 s, then the sampler thread stops at its 4 s budget
        assert time.monotonic() - start < 15
        assert "binding to 127.0.0.1 only, not 0.0.0.0" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
