"""Scoped API keys: 401 without a key, 403 for a scope that does not cover the route, exactly as the table says."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from oodsynth.api_keys import KeyGrant, hash_key, new_api_key, parse_api_keys
from oodsynth.client import OodsynthClient
from oodsynth.config import get_settings
from oodsynth.errors import Forbidden, InputError, Unauthorized
from services.embed_sampler.app import create_app
from services.embed_sampler.cli import bind_host

# Every operation of the API and the scope it needs (None: open).
SCOPE_OF = {
    ("GET", "/healthz"): None,
    ("GET", "/metrics"): "read",
    ("GET", "/fits"): "read",
    ("GET", "/fits/{name}"): "read",
    ("GET", "/samples/{sample_id}"): "read",
    ("GET", "/jobs/{job_id}"): "read",
    ("GET", "/queue"): "read",
    ("GET", "/datasets/{name}/gallery"): "read",
    ("GET", "/datasets/{name}/images/{path}"): "read",
    ("POST", "/fits"): "write",
    ("POST", "/sample"): "write",
    ("POST", "/generate"): "write",
    ("POST", "/features"): "write",
    ("DELETE", "/fits/{name}"): "admin",
    ("DELETE", "/samples/{sample_id}"): "write",
}
ORDER = ["read", "write", "admin"]


@pytest.fixture
def keys(redis_url, monkeypatch) -> dict[str, str]:
    made = {scope: new_api_key(scope) for scope in ORDER}
    monkeypatch.setenv("OODSYNTH_API_KEYS", ", ".join(entry for _, entry in made.values()))
    get_settings.cache_clear()
    return {scope: key for scope, (key, _) in made.items()}


@pytest.fixture
def api(keys):
    with TestClient(create_app()) as client:
        yield client


def _call(api, method: str, template: str, key: str | None):
    path = (
        template.replace("{name}", "toy")
        .replace("{sample_id}", "s1")
        .replace("{job_id}", "j1")
        .replace("{path}", "c/x.png")
    )
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return api.request(method, path, headers=headers)


def test_table_covers_every_operation(api):
    operations = {(m.upper(), p) for p, ops in api.app.openapi()["paths"].items() for m in ops}
    assert operations == set(SCOPE_OF)


@pytest.mark.parametrize("method,template", sorted(SCOPE_OF))
def test_scopes(api, keys, method, template):
    needed = SCOPE_OF[(method, template)]
    if needed is None:
        assert _call(api, method, template, None).status_code == 200
        return
    r = _call(api, method, template, None)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["detail"][0]["loc"] == ["header", "authorization"]
    assert _call(api, method, template, "not-a-key").status_code == 401
    for scope in ORDER:
        status = _call(api, method, template, keys[scope]).status_code
        if ORDER.index(scope) < ORDER.index(needed):
            assert status == 403, (scope, status)
        else:
            assert status not in (401, 403, 500), (scope, status)


def test_keys_are_stored_as_hashes_and_malformed_entries_are_named():
    key, entry = new_api_key("admin")
    assert key not in entry and entry == f"admin:{hash_key(key)}"
    assert parse_api_keys(f" {entry}\nread:{'a' * 64} ") == {
        hash_key(key): KeyGrant("admin", "default"),
        "a" * 64: KeyGrant("read", "default"),
    }
    with pytest.raises(InputError) as exc:
        parse_api_keys(f"{entry},write:{key}")
    assert exc.value.field == "api_keys[1]" and key not in exc.value.message


def test_an_entry_may_name_its_tenant_and_a_malformed_tenant_is_named():
    key, entry = new_api_key("write", tenant="lab-a")
    assert entry == f"write:{hash_key(key)}:lab-a"
    assert parse_api_keys(f"{entry},read:{'b' * 64}:lab_2") == {
        hash_key(key): KeyGrant("write", "lab-a"),
        "b" * 64: KeyGrant("read", "lab_2"),
    }
    for tenant in ("", "-lab", "lab/a", "x" * 33, "lab.a", "é"):
        with pytest.raises(InputError) as exc:
            parse_api_keys(f"read:{'c' * 64},admin:{'d' * 64}:{tenant}")
        assert exc.value.field == "api_keys[1]", tenant
    with pytest.raises(InputError) as exc:
        new_api_key("read", tenant="../x")
    assert exc.value.field == "tenant"


def test_client_sends_its_key_and_gets_typed_errors(api, keys, monkeypatch):
    assert OodsynthClient(http=api, api_key=keys["read"]).list_fits() == []
    with pytest.raises(Forbidden) as exc:
        OodsynthClient(http=api, api_key=keys["read"]).delete_fit("toy")
    assert exc.value.field == "authorization" and "needs 'admin'" in exc.value.message
    with pytest.raises(Unauthorized):
        OodsynthClient(http=api).list_fits()
    monkeypatch.setenv("OODSYNTH_API_KEY", keys["write"])  # what `oodsynth --api-key` and compose set
    get_settings.cache_clear()
    assert OodsynthClient(http=api).list_fits() == []


def test_without_keys_everything_is_open_and_serve_binds_to_loopback(redis_url, capsys):
    with TestClient(create_app()) as api:
        assert api.get("/fits").status_code == 200 and api.get("/metrics").status_code == 200
    assert bind_host("0.0.0.0") == "127.0.0.1"
    assert "binding to 127.0.0.1 only" in capsys.readouterr().err


def test_with_keys_serve_binds_where_asked(keys):
    assert bind_host("0.0.0.0") == "0.0.0.0"


def test_without_keys_foreign_hosts_and_cross_site_writes_are_refused(redis_url):
    """DNS rebinding (a foreign Host) and CSRF (a foreign Origin on a POST) against a keyless local API."""
    with TestClient(create_app()) as api:
        r = api.get("/fits", headers={"Host": "evil.example:8000"})
        assert r.status_code == 403 and r.json()["detail"][0]["loc"] == ["header", "host"], r.text
        upload = {"data": {"name": "x"}, "files": {"file": ("b.npz", b"junk", "application/octet-stream")}}
        r = api.post("/fits", headers={"Host": "127.0.0.1:8000", "Origin": "https://evil.example"}, **upload)
        assert r.status_code == 403 and r.json()["detail"][0]["loc"] == ["header", "origin"], r.text
        r = api.post("/fits", headers={"Host": "127.0.0.1:8000", "Origin": "http://127.0.0.1:8000"}, **upload)
        assert r.status_code == 422  # same-origin: reaches the bank check
        assert api.get("/fits", headers={"Host": "localhost:8000", "Origin": "https://evil.example"}).status_code == 200
        assert api.get("/healthz", headers={"Host": "evil.example"}).status_code == 200
