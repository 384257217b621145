"""Exposure without keys: peers, CSRF, names that read as something else, passwords in output."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import redis
from fastapi.testclient import TestClient
from hostile_helpers import first_error, post_fit

from oodsynth.config import get_settings
from services.embed_sampler.app import create_app
from tests.helpers.servers import wait_healthy

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/140.0"


def test_the_local_only_guard_checks_the_peer_address_not_the_host_header(caps):
    """Under plain `uvicorn --host 0.0.0.0`, a remote client sending `Host: 127.0.0.1` was served."""
    with TestClient(create_app(), client=("203.0.113.7", 40000), raise_server_exceptions=False) as remote:
        r = remote.get("/fits", headers={"Host": "127.0.0.1"})
        assert r.status_code == 403 and first_error(r)["loc"] == ["header", "host"], r.text
    for peer in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        with TestClient(create_app(), client=(peer, 40000), raise_server_exceptions=False) as local:
            assert local.get("/fits", headers={"Host": "127.0.0.1"}).status_code == 200, peer
    with TestClient(create_app(), client=("::ffff:203.0.113.7", 40000), raise_server_exceptions=False) as remote:
        assert remote.get("/fits", headers={"Host": "127.0.0.1"}).status_code == 403


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://127.0.0.1:9999"},  # another local port is another origin
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site", "User-Agent": BROWSER},  # no Origin at all
        {"Sec-Fetch-Site": "same-site", "User-Agent": BROWSER},
        {"User-Agent": BROWSER},  # a browser that sends neither Origin nor Sec-Fetch-Site
    ],
)
def test_cross_site_state_changes_are_refused_without_relying_on_origin(api, headers):
    """Without keys, `Origin: http://127.0.0.1:9999` and `Sec-Fetch-Site: cross-site` without an Origin were served."""
    r = post_fit(api, headers=headers)
    assert r.status_code == 403, r.text
    assert api.get("/fits").json() == {"fits": []}


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, the CLI, scripts: no browser, no Origin
        {"Origin": "http://testserver", "User-Agent": BROWSER, "Sec-Fetch-Site": "same-origin"},  # the /docs page
        {"User-Agent": BROWSER, "X-Requested-With": "XMLHttpRequest"},  # a header no form can add
    ],
)
def test_same_origin_and_non_browser_clients_still_change_state(api, headers):
    assert post_fit(api, headers=headers).status_code == 201


def test_the_projects_client_passes_the_csrf_check(api):
    from oodsynth.client import OodsynthClient
    from tests.helpers.toy_banks import toy_bank

    api.headers["User-Agent"] = BROWSER  # even when the transport looks like a browser
    client = OodsynthClient(http=api)
    assert client.fit("viaclient", toy_bank().to_bytes())["name"] == "viaclient"


def test_composed_and_decomposed_names_are_one_fit(api):
    """Composed and decomposed "é" made two fits."""
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert post_fit(api, composed).status_code == 201
    r = post_fit(api, decomposed)
    assert r.status_code == 409, r.text
    assert api.get(f"/fits/{decomposed}").json()["name"] == composed
    assert api.get("/fits").json() == {"fits": [composed]}


@pytest.mark.parametrize("name", ["\uff0e\uff0e", "\u2025", "a\uff0fb", "a\u2215b", "x\u3002y", "\ufb01le"])
def test_names_that_read_as_dots_or_slashes_are_refused(api, name):
    """Fullwidth "．．" was accepted as a name and became a folder."""
    r = post_fit(api, name)
    assert r.status_code == 422 and first_error(r)["loc"] == ["body", "name"], r.text
    r = api.post("/generate", json={"dataset": name, "vectors": [[1.0] * 16], "classes": [0], "fit": "toy"})
    assert r.status_code == 422 and first_error(r)["loc"] == ["body", "dataset"], r.text


@pytest.mark.slow  # an `oodsynth serve` process
def test_serve_never_prints_the_redis_password(tmp_path):
    """`oodsynth serve` printed the Redis URL with its password at start-up (it reached `docker logs`)."""
    from oodsynth.state.redis_conn import start_embedded_redis

    secret = "s3cret-Pa55word"
    server = start_embedded_redis(tmp_path / "redis")
    try:
        redis.Redis.from_url(server.url).config_set("requirepass", secret)
        port = __import__("oodsynth.demo", fromlist=["free_port"]).free_port()
        env = {**os.environ, "OODSYNTH_REDIS_URL": f"{server.url}?password={secret}", "OODSYNTH_API_KEYS": ""}
        out = tmp_path / "serve.log"
        with open(out, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", "from oodsynth.cli import app; app()", "serve", "--port", str(port)],
                env=env,
                stdout=log,
                stderr=log,
            )
            try:
                wait_healthy(f"http://127.0.0.1:{port}", proc)
                time.sleep(0.5)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        text = out.read_text()
        assert "redis: " in text and "password=***" in text, text
        assert secret not in text, text
    finally:
        server.stop()
        get_settings.cache_clear()
