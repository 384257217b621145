"""The gallery routes without a browser: filters, pagination, errors naming the parameter, images only by manifest."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from oodsynth.service.gallery import VERIFIED_AT
from services.embed_sampler.app import create_app
from tests.helpers.stores import make_store


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery") / "store"
    make_store(root, per_class=30)
    return root


@pytest.fixture
def client(store_root, settings_env):
    settings_env(STORE=store_root)
    return TestClient(create_app())


def test_the_verified_filter_uses_train_oods_default_threshold():
    from oodsynth.decoding.verification import DEFAULT_MAX_ID_PERCENTILE

    assert VERIFIED_AT == DEFAULT_MAX_ID_PERCENTILE


def test_page_filters_and_images(client):
    r = client.get("/datasets/blobs/gallery", params={"class": "dog", "sampler": "knn_boundary", "per_page": 7})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.text.count('<figure class="card" data-class="dog" data-sampler="knn_boundary">') == 7
    assert "15 images" in r.text and "page 1 of 3" in r.text and 'rel="next"' in r.text
    src = re.search(r'src="(images/[^"]+)"', r.text).group(1)
    png = client.get(f"/datasets/blobs/{src}")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG" and png.headers["content-type"] == "image/png"
    r = client.get("/datasets/blobs/gallery", params={"class": "", "verified": "yes", "per_page": 1000})
    assert r.status_code == 200 and r.text.count('class="badge yes"') == r.text.count("<figure") > 0
    assert 'class="badge no"' not in r.text
    assert "&lt;outlier:cat&gt;" in client.get("/datasets/blobs/gallery").text  # manifest text is escaped


@pytest.mark.parametrize(
    "url, status, loc",
    [
        ("/datasets/nope/gallery", 404, ["path", "name"]),
        ("/datasets/blobs/gallery?class=cow", 422, ["query", "class"]),
        ("/datasets/blobs/gallery?sampler=x", 422, ["query", "sampler"]),
        ("/datasets/blobs/gallery?verified=maybe", 422, ["query", "verified"]),
        ("/datasets/blobs/gallery?per_page=5000", 422, ["query", "per_page"]),
        ("/datasets/blobs/gallery?page=99", 422, ["query", "page"]),
        ("/datasets/blobs/images/cat/nope.png", 404, ["path", "path"]),
        ("/datasets/blobs/images/cat/..%2F..%2Fmanifest%2Fjob-0.jsonl", 404, ["path", "path"]),
        ("/datasets/blobs/images/manifest/job-0.jsonl", 404, ["path", "path"]),
        ("/datasets/blobs/images/%2E%2E/blobs/cat/cat-0.png", 404, ["path", "path"]),
    ],
)
def test_errors_name_the_parameter(client, url, status, loc):
    r = client.get(url)
    assert r.status_code == status and r.json()["detail"][0]["loc"] == loc, r.text
