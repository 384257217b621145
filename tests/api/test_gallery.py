"""The gallery routes without a browser: filters, pagination, errors naming the parameter, images only by manifest."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from oodsynth.service.gallery import VERIFIED_AT
from oodsynth.store.results import ResultStore
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
    assert r.text.count('<figure class="card" data-class="dog" data-sampler="knn_boundary" ') == 7
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


def _knn(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"k-NN ([0-9.e+-]+)", text)]


def _pcts(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"\">ID pct ([0-9.e+-]+)", text)]  # the badge: the image's


def test_sort_orders_the_page_and_missing_values_come_last(client):
    asc = client.get("/datasets/blobs/gallery", params={"sort": "knn_distance", "per_page": 1000}).text
    desc = client.get("/datasets/blobs/gallery", params={"sort": "knn_distance", "order": "desc", "per_page": 1000})
    assert _knn(asc) == sorted(_knn(asc)) and _knn(desc.text) == sorted(_knn(asc), reverse=True)
    cards = asc.split("<figure")[1:]
    assert "k-NN" not in cards[-1] and "k-NN" in cards[0]  # make_store's first image per class has none: last
    by_pct = client.get("/datasets/blobs/gallery", params={"sort": "id_percentile", "order": "desc"}).text
    assert _pcts(by_pct) == sorted(_pcts(by_pct), reverse=True) and len(_pcts(by_pct)) == 90


def test_range_filters_keep_only_images_inside_both_ranges(client):
    r = client.get("/datasets/blobs/gallery", params={"id_min": 5, "id_max": 20, "knn_min": 2, "knn_max": 10})
    assert r.status_code == 200
    pcts, knn = _pcts(r.text), _knn(r.text)
    assert pcts and all(5 <= p <= 20 for p in pcts) and all(2 <= k <= 10 for k in knn) and len(knn) == len(pcts)
    assert f"{len(pcts)} images" in r.text


def test_the_histogram_counts_every_matching_image_and_its_bars_link_to_their_range(client):
    text = client.get("/datasets/blobs/gallery", params={"class": "dog", "per_page": 5}).text
    counts = [int(c) for c in re.findall(r'data-count="(\d+)"', text)]
    assert len(counts) == 20 and sum(counts) == 30  # every dog over all pages, not the 5 shown
    assert (
        re.search(r'<svg id="histogram"', text) and "<script src" not in text and "http" not in text.split("<main")[0]
    )
    href = re.search(r'<a href="([^"]+)"><title>ID percentile 5&ndash;10', text).group(1).replace("&amp;", "&")
    narrowed = client.get(f"/datasets/blobs/gallery{href}").text
    assert all(5 <= p <= 10 for p in _pcts(narrowed)) and "class=dog" in href


def test_page_size_choices_and_jump_to_page(client):
    text = client.get("/datasets/blobs/gallery", params={"per_page": 7, "page": 3, "sort": "margin"}).text
    assert "page 3 of" in text and re.search(r"<option selected>7</option>", text)
    jump = re.search(r'<form method="get" id="jump">(.*?)</form>', text, re.S).group(1)
    hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', jump))
    assert hidden == {"sort": "margin", "per_page": "7"}  # the jump form keeps the filters, not the page
    assert 'rel="first"' in text and 'rel="last"' in text


@pytest.mark.parametrize(
    "query, field",
    [
        ("page=99", "page"),
        ("id_min=50&id_max=10", "id_max"),
        ("knn_min=-1", "knn_min"),
        ("knn_max=nan", "knn_max"),
        ("id_max=101", "id_max"),
        ("sort=size", "sort"),
        ("order=up", "order"),
        ("per_page=0", "per_page"),
        ("class=cow", "class"),
    ],
)
def test_a_browser_gets_bad_queries_as_a_page_naming_the_field(client, query, field):
    r = client.get(f"/datasets/blobs/gallery?class=dog&{query}", headers={"Accept": "text/html,*/*;q=0.8"})
    assert r.status_code == 422 and r.headers["content-type"].startswith("text/html"), r.text
    assert f'<li data-field="{field}">' in r.text and "<h1>422" in r.text
    retry = re.search(r'id="retry" href="([^"]*)"|href="([^"]*)" id="retry"', r.text)
    assert retry and f"{field}=" not in retry.group(0) and "page=" not in retry.group(0)
    assert client.get(f"/datasets/blobs/gallery?{query}").json()["detail"][0]["loc"] == ["query", field]


def test_a_browser_gets_a_missing_dataset_as_a_404_page(client):
    r = client.get("/datasets/nope/gallery", headers={"Accept": "text/html"})
    assert r.status_code == 404 and "<h1>404 · Not found" in r.text and '<li data-field="name">' in r.text


def test_links_of_a_class_named_with_url_characters_reach_it(tmp_path, settings_env):
    """A class named ``a#b?c%d`` (issue 32): its image src and filter links are percent-encoded and resolve."""
    from tests.helpers.stores import write_verified_images

    write_verified_images(tmp_path, [{"verified_id_percentile": 3.0}, {}], [0, 1], ["a#b?c%d", "plain"])
    settings_env(STORE=tmp_path)
    client = TestClient(create_app())
    text = client.get("/datasets/dec/gallery", params={"class": "a#b?c%d"}).text
    assert text.count("<figure") == 1
    src = re.search(r'src="(images/[^"]+)"', text).group(1)
    assert src.startswith("images/a%23b%3Fc%25d/")
    assert client.get(f"/datasets/dec/{src}").content[:4] == b"\x89PNG"
    href = re.search(r'<a href="([^"]+)"><title>ID percentile 0', text).group(1).replace("&amp;", "&")
    assert "class=a%23b%3Fc%25d" in href
    assert client.get(f"/datasets/dec/gallery{href}").text.count("<figure") == 1


def test_images_written_after_a_page_was_served_show_up(tmp_path, settings_env):
    """The page keeps the dataset's rows between requests, until a manifest shard changes."""
    from tests.helpers.stores import write_verified_images

    write_verified_images(tmp_path, [{"verified_id_percentile": 3.0}])
    settings_env(STORE=tmp_path)
    client = TestClient(create_app())
    assert "1 image " in client.get("/datasets/dec/gallery").text
    store = ResultStore(tmp_path)
    record = store.records("dec")[0].model_copy(update={"image_id": "img-new", "job_id": "job-later"})
    assert store.write_image("dec", record, Image.new("RGB", (16, 16)))
    text = client.get("/datasets/dec/gallery").text
    assert "2 images" in text and text.count("<figure") == 2


def test_the_gallery_keeps_the_rows_of_a_few_datasets_only(tmp_path):
    from oodsynth.service import gallery

    for i in range(gallery.MAX_SNAPSHOTS + 2):
        make_store(tmp_path / f"s{i}", per_class=1)
        gallery.gallery_page(ResultStore(tmp_path / f"s{i}"), "blobs", gallery.GalleryQuery())
    kept = [url for url, _ in gallery._SNAPSHOTS]
    assert len(kept) == gallery.MAX_SNAPSHOTS and kept[-1] == ResultStore(tmp_path / f"s{i}").url


def test_the_class_filter_finds_an_nfc_stored_class_by_its_nfd_spelling(tmp_path, settings_env):
    """Names are stored in NFC (issue 32): ``class=`` in NFD (e + combining acute) must show the same images."""
    import unicodedata

    from tests.helpers.stores import write_verified_images

    nfc = unicodedata.normalize("NFC", "caf\u00e9")
    write_verified_images(tmp_path, [{"verified_id_percentile": 3.0}, {}], [0, 1], [nfc, "plain"])
    settings_env(STORE=tmp_path)
    client = TestClient(create_app())
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc
    for spelling in (nfc, nfd):
        assert client.get("/datasets/dec/gallery", params={"class": spelling}).text.count("<figure") == 1
