"""Each tenant's samples within a byte budget of its own, over a real Redis: one tenant's large draws never evict
another's sample, and an evicted sample answers its tenant 410 saying why (another tenant: the plain 404)."""

from __future__ import annotations

import json

import pytest
import redis
from fastapi.testclient import TestClient

from oodsynth.api_keys import new_api_key
from services.embed_sampler.app import create_app
from tests.helpers.toy_banks import toy_bank

KEYS = {"a": ("write", "lab-a"), "b": ("write", "lab-b"), "admin": ("admin", "ops")}
MISSING_SAMPLE = "0" * 32
SMALL, LARGE = 2, 40  # vectors per class of a small and of a large draw


@pytest.fixture
def api(redis_url, settings_env):
    made = {name: new_api_key(scope, tenant) for name, (scope, tenant) in KEYS.items()}
    settings_env(API_KEYS=",".join(entry for _, entry in made.values()), MODEL="tiny-test-model")
    with TestClient(create_app()) as client:
        client.keys = {name: key for name, (key, _) in made.items()}
        yield client


@pytest.fixture
def local_api(redis_url, settings_env):
    """No keys configured: every caller is tenant ``default``, as before tenants."""
    settings_env(MODEL="tiny-test-model")
    with TestClient(create_app()) as client:
        client.keys = {}
        yield client


def call(api, who: str | None, method: str, url: str, **kw):
    headers = {"Authorization": f"Bearer {api.keys[who]}"} if who else {}
    return api.request(method, url, headers=headers, **kw)


def post_fit(api, who: str | None, name: str) -> None:
    files = {"file": ("bank.npz", toy_bank().to_bytes(), "application/octet-stream")}
    assert call(api, who, "POST", "/fits", data={"name": name}, files=files).status_code == 201


def draw(api, who: str | None, fit: str, n: int, seed: int = 0) -> dict:
    body = {"fit": fit, "method": "inverse_rejection", "n_per_class": n, "seed": seed, "include_vectors": False}
    r = call(api, who, "POST", "/sample", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def stored_bytes(redis_url: str, index: str, sample_id: str) -> int:
    return int(redis.Redis.from_url(redis_url).hget(index, sample_id))


def budget_for_small_samples(redis_url, settings_env, index: str, sample_id: str, count: float) -> int:
    """Set the per-tenant budget to ``count`` samples of ``sample_id``'s size; the budget in bytes."""
    budget = int(count * stored_bytes(redis_url, index, sample_id))
    assert budget >= 1024, budget  # the setting's floor
    settings_env(SAMPLE_BUDGET_BYTES=budget)
    return budget


def assert_evicted(r, loc: list) -> None:
    """A 410 naming ``sample_id`` and saying why it went."""
    assert r.status_code == 410, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == loc and error["type"] == "gone", error
    assert "evicted" in error["msg"] and "OODSYNTH_SAMPLE_BUDGET_BYTES" in error["msg"], error
    assert "newer samples of the same tenant replaced it" in error["msg"], error


def assert_missing(api, who: str, method: str, sample_id: str) -> None:
    """Another tenant's evicted sample answers exactly as an id never drawn does."""
    hidden = call(api, who, method, f"/samples/{sample_id}")
    missing = call(api, who, method, f"/samples/{MISSING_SAMPLE}")
    assert hidden.status_code == missing.status_code == 404, (hidden.text, missing.text)
    assert hidden.json() == json.loads(missing.text.replace(MISSING_SAMPLE, sample_id))


def test_another_tenants_large_samples_never_evict_a_tenants_sample(api, redis_url, settings_env):
    """Issue 32: four large /sample calls of one client evicted another's sample, which then answered 404."""
    post_fit(api, "a", "fit-a")
    post_fit(api, "b", "fit-b")
    kept = draw(api, "a", "fit-a", SMALL)["sample_id"]
    budget = budget_for_small_samples(redis_url, settings_env, "oodsynth:samples:bytes:lab-a", kept, 2.5)
    drawn = [draw(api, "b", "fit-b", LARGE, seed=s) for s in range(4)]
    ids = [d["sample_id"] for d in drawn]
    assert stored_bytes(redis_url, "oodsynth:samples:bytes:lab-b", ids[-1]) > budget  # each evicts all before it
    assert [d.get("evicted") for d in drawn] == [None, ids[:1], ids[1:2], ids[2:3]]  # absent when none
    assert call(api, "a", "GET", f"/samples/{kept}?include_vectors=false").status_code == 200
    assert call(api, "b", "GET", f"/samples/{ids[-1]}?include_vectors=false").status_code == 200
    for evicted in ids[:3]:
        assert_evicted(call(api, "b", "GET", f"/samples/{evicted}"), ["path", "sample_id"])
        assert_missing(api, "a", "GET", evicted)
    assert_evicted(
        call(api, "b", "POST", "/generate", json={"dataset": "b", "sample_id": ids[0]}), ["body", "sample_id"]
    )
    assert_evicted(call(api, "admin", "GET", f"/samples/{ids[0]}"), ["path", "sample_id"])  # admin sees every tenant
    assert_missing(api, "a", "DELETE", ids[0])
    assert_evicted(call(api, "b", "DELETE", f"/samples/{ids[0]}"), ["path", "sample_id"])
    client = redis.Redis.from_url(redis_url)
    assert client.hkeys("oodsynth:samples:bytes:lab-a") == [kept.encode()]
    assert client.hkeys("oodsynth:samples:bytes:lab-b") == [ids[-1].encode()]
    assert not client.exists("oodsynth:samples:bytes")  # no default-tenant sample was drawn


def test_within_a_tenant_the_oldest_is_evicted_and_answers_410(api, redis_url, settings_env):
    post_fit(api, "a", "fit-a")
    first = draw(api, "a", "fit-a", SMALL)["sample_id"]
    budget_for_small_samples(redis_url, settings_env, "oodsynth:samples:bytes:lab-a", first, 2.5)
    second, third = (draw(api, "a", "fit-a", SMALL, seed=s) for s in (1, 2))
    assert "evicted" not in second and third["evicted"] == [first]
    r = call(api, "a", "GET", f"/samples/{first}")
    assert_evicted(r, ["path", "sample_id"])
    assert "tenant 'lab-a'" in r.json()["detail"][0]["msg"], r.text
    assert_evicted(
        call(api, "a", "POST", "/generate", json={"dataset": "a", "sample_id": first}), ["body", "sample_id"]
    )
    assert_missing(api, "b", "GET", first)
    assert_missing(api, "b", "DELETE", first)
    for kept in (second, third):
        assert call(api, "a", "GET", f"/samples/{kept['sample_id']}?include_vectors=false").status_code == 200
    client = redis.Redis.from_url(redis_url)
    sample_ttl, tomb_ttl = (
        client.ttl(f"oodsynth:sample:{third['sample_id']}"),
        client.ttl(f"oodsynth:samples:evicted:{first}"),
    )
    assert 0 < tomb_ttl <= sample_ttl  # the tombstone lasts as long as the sample would have, no longer
    assert not client.keys("oodsynth:sample:evicted:*")  # tombstones are no stored samples


def test_default_tenant_samples_are_budgeted_as_before_but_answer_410(local_api, redis_url, settings_env):
    """No keys: tenant ``default`` keeps the index keys from before tenants, and a sample stored before them (no
    ``tenant`` field) is still counted and evicted first."""
    post_fit(local_api, None, "toy")
    old = draw(local_api, None, "toy", SMALL)["sample_id"]
    client = redis.Redis.from_url(redis_url)
    client.hdel(f"oodsynth:sample:{old}", "tenant")  # as stored before tenants
    budget_for_small_samples(redis_url, settings_env, "oodsynth:samples:bytes", old, 2.5)
    drawn = [draw(local_api, None, "toy", SMALL, seed=s)["sample_id"] for s in (1, 2, 3)]
    assert_evicted(call(local_api, None, "GET", f"/samples/{old}"), ["path", "sample_id"])
    assert_evicted(call(local_api, None, "GET", f"/samples/{drawn[0]}"), ["path", "sample_id"])
    assert call(local_api, None, "GET", f"/samples/{drawn[2]}?include_vectors=false").status_code == 200
    assert call(local_api, None, "GET", f"/samples/{MISSING_SAMPLE}").status_code == 404
    assert sorted(client.hkeys("oodsynth:samples:bytes")) == sorted(s.encode() for s in drawn[1:])
    assert client.hget(f"oodsynth:samples:evicted:{old}", "tenant") == b"default"


def test_the_410_is_documented_where_a_sample_is_read_by_id(local_api):
    paths = local_api.get("/openapi.json").json()["paths"]
    for path, method in (("/samples/{sample_id}", "get"), ("/samples/{sample_id}", "delete"), ("/generate", "post")):
        assert "410" in paths[path][method]["responses"], (method, path)
    assert "410" not in paths["/sample"]["post"]["responses"]
    assert "evicted" in json.dumps(local_api.get("/openapi.json").json()["components"]["schemas"]["SampleResponse"])
