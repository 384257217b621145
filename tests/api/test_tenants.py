"""Tenants over a real Redis and store: each key reads only its tenant's fits, samples, jobs and images.

Two tenants (``lab-a``, ``lab-b``) with a write and a read key each, an admin key, and a two-field entry (tenant
``default``). Another tenant's object answers exactly as a missing one does, but for its name.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from oodsynth.api_keys import new_api_key
from oodsynth.config import get_settings
from oodsynth.state.fits import FitRegistry
from oodsynth.store.results import ImageRecord, ResultStore
from oodsynth.worker.allowlist import AllowlistWorker
from services.embed_sampler.app import create_app
from tests.helpers.stores import make_store
from tests.helpers.toy_banks import toy_bank

KEYS = {  # name -> (scope, tenant); "legacy" is written as a two-field entry
    "a": ("write", "lab-a"),
    "a_read": ("read", "lab-a"),
    "b": ("write", "lab-b"),
    "b_read": ("read", "lab-b"),
    "admin": ("admin", "ops"),
    "legacy": ("write", "default"),
}
MISSING_SAMPLE = "0" * 32


@pytest.fixture
def api(redis_url, settings_env):
    made = {name: new_api_key(scope, tenant) for name, (scope, tenant) in KEYS.items()}
    assert ":" not in made["legacy"][1].split(":", 1)[1]  # tenant default: the old two-field form
    settings_env(API_KEYS=",".join(entry for _, entry in made.values()), MODEL="tiny-test-model")
    with TestClient(create_app()) as client:
        client.keys = {name: key for name, (key, _) in made.items()}
        yield client


def call(api, who: str, method: str, url: str, **kw):
    return api.request(method, url, headers={"Authorization": f"Bearer {api.keys[who]}"}, **kw)


def post_fit(api, who: str, name: str, *, replace: bool = False, bank=None):
    bank = bank if bank is not None else toy_bank()
    files = {"file": ("bank.npz", bank.to_bytes(), "application/octet-stream")}
    return call(api, who, "POST", "/fits" + ("?replace=true" if replace else ""), data={"name": name}, files=files)


def draw(api, who: str, fit: str, n: int = 2):
    return call(api, who, "POST", "/sample", json={"fit": fit, "method": "inverse_rejection", "n_per_class": n})


def assert_hidden(hidden, missing, name: str, absent: str) -> None:
    """Another tenant's object (``hidden``) answers as a missing one (``missing``) does, but for its name."""
    assert hidden.status_code == missing.status_code == 404, (hidden.text, missing.text)
    assert hidden.json() == json.loads(missing.text.replace(absent, name))


def test_fits_are_listed_and_read_by_their_tenant_only(api):
    for who, name in (("a", "fit-a"), ("b", "fit-b"), ("legacy", "fit-d")):
        assert post_fit(api, who, name).status_code == 201
    assert call(api, "a_read", "GET", "/fits").json() == {"fits": ["fit-a"]}
    assert call(api, "b_read", "GET", "/fits").json() == {"fits": ["fit-b"]}
    assert call(api, "legacy", "GET", "/fits").json() == {"fits": ["fit-d"]}
    assert call(api, "admin", "GET", "/fits").json() == {"fits": ["fit-a", "fit-b", "fit-d"]}
    assert call(api, "a_read", "GET", "/fits/fit-a").status_code == 200
    assert call(api, "admin", "GET", "/fits/fit-b").status_code == 200
    assert_hidden(
        call(api, "a_read", "GET", "/fits/fit-b"), call(api, "a_read", "GET", "/fits/fit-z"), "fit-b", "fit-z"
    )
    # Names are one namespace: another tenant's name is taken, replace or not, and the fit stays its owner's.
    for replace in (False, True):
        r = post_fit(api, "b", "fit-a", replace=replace)
        assert r.status_code == 409 and r.json()["detail"][0]["loc"][-1] == "name", r.text
    assert post_fit(api, "a", "fit-a", replace=True).status_code == 201
    assert post_fit(api, "admin", "fit-a", replace=True).status_code == 201  # admin replaces; lab-a keeps it
    assert call(api, "a_read", "GET", "/fits").json() == {"fits": ["fit-a"]}


def test_a_fit_stored_before_tenants_is_defaults(api, redis_url):
    assert post_fit(api, "a", "old").status_code == 201
    redis.Redis.from_url(redis_url).hdel(FitRegistry.key("old"), "tenant")  # as written before tenants
    assert call(api, "legacy", "GET", "/fits").json() == {"fits": ["old"]}
    assert call(api, "legacy", "GET", "/fits/old").status_code == 200
    assert call(api, "a_read", "GET", "/fits").json() == {"fits": []}
    assert_hidden(call(api, "a", "GET", "/fits/old"), call(api, "a", "GET", "/fits/new"), "old", "new")


def test_samples_are_drawn_from_and_read_by_their_tenant_only(api):
    assert post_fit(api, "a", "fit-a").status_code == 201
    assert_hidden(draw(api, "b", "fit-a"), draw(api, "b", "fit-z"), "fit-a", "fit-z")
    r = draw(api, "a", "fit-a")
    assert r.status_code == 200, r.text
    sample_id = r.json()["sample_id"]
    for who in ("a_read", "admin"):
        assert call(api, who, "GET", f"/samples/{sample_id}?include_vectors=false").status_code == 200
    for who in ("b_read", "legacy"):
        for url in ("/samples/{}", "/samples/{}?format=npz"):
            assert_hidden(
                call(api, who, "GET", url.format(sample_id)),
                call(api, who, "GET", url.format(MISSING_SAMPLE)),
                sample_id,
                MISSING_SAMPLE,
            )
    # another tenant cannot delete it either (404 as a missing one); its own tenant can
    assert_hidden(
        call(api, "b", "DELETE", f"/samples/{sample_id}"),
        call(api, "b", "DELETE", f"/samples/{MISSING_SAMPLE}"),
        sample_id,
        MISSING_SAMPLE,
    )
    assert call(api, "a", "DELETE", f"/samples/{sample_id}").status_code == 204
    assert call(api, "admin", "GET", f"/samples/{sample_id}").status_code == 404


def _payloads(redis_url, job_ids: list[str]) -> list[dict]:
    conn = redis.Redis.from_url(redis_url)
    return [Job.fetch(j, connection=conn, serializer=JSONSerializer).args[0] for j in job_ids]


def test_generate_and_jobs_belong_to_the_tenant(api, redis_url):
    assert post_fit(api, "a", "fit-a").status_code == 201
    sample_id = draw(api, "a", "fit-a").json()["sample_id"]
    body = {"dataset": "a-out", "sample_id": sample_id}
    missing = {**body, "sample_id": MISSING_SAMPLE}
    hidden = call(api, "b", "POST", "/generate", json=body)
    assert_hidden(hidden, call(api, "b", "POST", "/generate", json=missing), sample_id, MISSING_SAMPLE)
    inline = {"dataset": "b-out", "fit": "fit-a", "vectors": [[0.1] * 16], "classes": [0]}
    assert_hidden(
        call(api, "b", "POST", "/generate", json=inline),
        call(api, "b", "POST", "/generate", json={**inline, "fit": "fit-z"}),
        "fit-a",
        "fit-z",
    )
    r = call(api, "a", "POST", "/generate", json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_ids"][0]
    assert {p.get("tenant") for p in _payloads(redis_url, r.json()["job_ids"])} == {"lab-a"}
    for who in ("a_read", "admin"):
        assert call(api, who, "GET", f"/jobs/{job_id}").json()["status"] == "queued"
    for who in ("b_read", "legacy"):
        assert_hidden(
            call(api, who, "GET", f"/jobs/{job_id}"), call(api, who, "GET", "/jobs/no-such-job"), job_id, "no-such-job"
        )
    # Tenant default is what no tenant means: its payloads carry none, as every payload before tenants.
    assert post_fit(api, "legacy", "fit-d").status_code == 201
    own = draw(api, "legacy", "fit-d").json()["sample_id"]
    r = call(api, "legacy", "POST", "/generate", json={**body, "sample_id": own})
    assert r.status_code == 202, r.text
    assert all("tenant" not in p for p in _payloads(redis_url, r.json()["job_ids"]))
    assert call(api, "admin", "GET", f"/jobs/{r.json()['job_ids'][0]}").status_code == 200


def test_queue_shows_counts_only_below_admin(api):
    assert post_fit(api, "a", "fit-a").status_code == 201
    sample_id = draw(api, "a", "fit-a").json()["sample_id"]
    job_ids = call(api, "a", "POST", "/generate", json={"dataset": "a-out", "sample_id": sample_id}).json()["job_ids"]
    queue = Queue(get_settings().queue_name, connection=redis.Redis.from_url(get_settings().redis_url))
    worker = AllowlistWorker([queue], connection=queue.connection, serializer=JSONSerializer)
    worker.register_birth()
    try:
        full = call(api, "admin", "GET", "/queue").json()
        assert [w["hostname"] for w in full["workers"]] == [worker.hostname] and full["workers"][0]["pid"]
        for who in ("a_read", "b_read"):
            r = call(api, who, "GET", "/queue")
            counts = r.json()
            assert counts["queues"] == full["queues"] and counts["queues"][0]["queued"] == len(job_ids)
            assert counts["workers"] == 1 and counts["refused_jobs"] == {"count": 0}
            assert worker.hostname not in r.text and worker.name not in r.text
            assert not any(job_id in r.text for job_id in job_ids)
    finally:
        worker.register_death()


def _write(store: ResultStore, dataset: str, tenant: str | None, names: list[str]) -> None:
    """Rows as the worker writes them for a job of ``tenant`` (None: an import, or a row from before tenants)."""
    for i, name in enumerate(names):
        image = Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8))
        record = ImageRecord(
            image_id=f"{tenant}-{name}-{i}",
            class_index=i,
            class_name=name,
            vector_id=f"v{i}",
            sampler="knn_boundary",
            seed=i,
            model="m",
            prompt="p",
            tenant=tenant,
        )
        assert store.write_image(dataset, record, image)


def _page(api, who: str, dataset: str) -> str:
    page = call(api, who, "GET", f"/datasets/{dataset}/gallery")
    assert page.status_code == 200, page.text
    return page.text


def test_datasets_show_each_tenant_its_own_images(api, tmp_path, settings_env):
    store = make_store(tmp_path / "store", dataset="imported")  # no tenant recorded: default's
    settings_env(STORE=tmp_path / "store")
    _write(store, "a-out", "lab-a", ["cat", "ship"])
    _write(store, "shared-name", "lab-a", ["cat"])
    _write(store, "shared-name", "lab-b", ["ship"])
    for who, dataset in (("legacy", "imported"), ("a_read", "a-out"), ("admin", "imported"), ("admin", "a-out")):
        _page(api, who, dataset)
        image = f"/datasets/{dataset}/images/cat/{_first_id(store, dataset)}.png"
        assert call(api, who, "GET", image).status_code == 200
    for who, dataset in (("b_read", "a-out"), ("legacy", "a-out"), ("a_read", "imported")):
        image = f"cat/{_first_id(store, dataset)}.png"
        assert_hidden(
            call(api, who, "GET", f"/datasets/{dataset}/gallery"),
            call(api, who, "GET", "/datasets/nothing/gallery"),
            dataset,
            "nothing",
        )
        assert_hidden(
            call(api, who, "GET", f"/datasets/{dataset}/images/{image}"),
            call(api, who, "GET", f"/datasets/nothing/images/{image}"),
            dataset,
            "nothing",
        )
    # One name written by two tenants: each sees its own rows only (classes too); admin sees both.
    a_page, b_page = (_page(api, who, "shared-name") for who in ("a_read", "b_read"))
    assert "· 1 image ·" in a_page and "<option>cat</option>" in a_page and "<option>ship</option>" not in a_page
    assert "· 1 image ·" in b_page and "<option>ship</option>" in b_page and "<option>cat</option>" not in b_page
    assert "· 2 images ·" in _page(api, "admin", "shared-name")
    b_image = "ship/lab-b-ship-0.png"
    assert call(api, "b_read", "GET", f"/datasets/shared-name/images/{b_image}").status_code == 200
    assert call(api, "a_read", "GET", f"/datasets/shared-name/images/{b_image}").status_code == 404
    # img2img from another tenant's images: as from a dataset that does not exist.
    assert post_fit(api, "b", "fit-b", bank=toy_bank(names=["cat", "dog", "ship"])).status_code == 201
    body = {"dataset": "b-out", "fit": "fit-b", "vectors": [[0.1] * 16], "classes": [0]}
    hidden = call(api, "b", "POST", "/generate", json={**body, "init_images": {"dataset": "a-out"}})
    missing = call(api, "b", "POST", "/generate", json={**body, "init_images": {"dataset": "nothing"}})
    assert hidden.status_code == missing.status_code == 422
    assert hidden.json() == json.loads(missing.text.replace("nothing", "a-out"))


def _first_id(store: ResultStore, dataset: str) -> str:
    return next(r.image_id for r in store.records(dataset) if r.class_name == "cat")


@pytest.mark.slow  # it decodes with the tiny pipeline, whose session fixture costs the fast loop 12 s to build
def test_a_generate_job_writes_its_tenants_rows(api, tiny_sd, settings_env, redis_url):
    """The whole path: lab-a's /generate, a real worker on the tiny SD, then the gallery per key."""
    settings = settings_env(MODEL=tiny_sd, DEVICE="cpu", GPU_BATCH_SIZE=2)
    bank = toy_bank(2, 20, 768, anchor_norms=0.4, names=["cat", "ship"])
    assert post_fit(api, "a", "fit-a", bank=bank).status_code == 201
    sample_id = draw(api, "a", "fit-a", n=1).json()["sample_id"]
    body = {"dataset": "a-gen", "sample_id": sample_id, "steps": 2, "height": 64, "width": 64, "output_size": 32}
    r = call(api, "a", "POST", "/generate", json=body)
    assert r.status_code == 202, r.text
    queue = Queue(settings.queue_name, connection=redis.Redis.from_url(redis_url), serializer=JSONSerializer)
    AllowlistWorker([queue], connection=queue.connection, serializer=JSONSerializer).work(burst=True)
    job = call(api, "a_read", "GET", f"/jobs/{r.json()['job_ids'][0]}").json()
    assert job["status"] == "finished", job
    records = ResultStore(settings.store).records("a-gen")
    assert len(records) == 2 and {rec.tenant for rec in records} == {"lab-a"}
    path = records[0].path.split("/", 1)[1]
    for who in ("a_read", "admin"):
        assert "· 2 images ·" in _page(api, who, "a-gen")
        assert call(api, who, "GET", f"/datasets/a-gen/images/{path}").status_code == 200
    for who in ("b_read", "legacy"):
        assert call(api, who, "GET", "/datasets/a-gen/gallery").status_code == 404
        assert call(api, who, "GET", f"/datasets/a-gen/images/{path}").status_code == 404
