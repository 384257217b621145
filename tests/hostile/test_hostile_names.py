"""Round three, names the store can hold: the rule counts bytes, NFC everywhere, reserved names, no 500 for a path."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hostile_helpers import bank_members, first_error, npz_of, post_fit
from PIL import Image

from oodsynth.errors import InputError
from oodsynth.names import MAX_NAME_LENGTH, validate_name
from oodsynth.store.results import ImageRecord, ResultStore
from services.embed_sampler.app import create_app
from tests.helpers.stores import make_store

CJK_100 = "猫" * 100  # 100 characters, 300 bytes: passed a character count, then every write failed


def test_the_name_rule_counts_utf8_bytes():
    """A class or dataset name of 100 CJK characters (300 bytes) passed; the worker then failed 3 times."""
    with pytest.raises(InputError, match="bytes"):
        validate_name("dataset", CJK_100)
    assert validate_name("dataset", "猫" * (MAX_NAME_LENGTH // 3)) == "猫" * 42  # 126 bytes fit
    with pytest.raises(InputError, match="bytes"):
        validate_name("dataset", "é" * 100)  # 100 characters, 200 bytes


@pytest.mark.parametrize("name", ["manifest", "Manifest", "manifest.jsonl", "MANIFEST.JSONL"])
def test_the_stores_own_names_are_reserved(name):
    """A class named ``manifest`` shared the folder of the manifest shards: verify counted wrongly and said ok."""
    with pytest.raises(InputError, match="reserved"):
        validate_name("class_name", name)


def test_a_bank_with_a_300_byte_class_name_is_refused(api):
    names = np.asarray(["class_a", CJK_100, "class_c"])
    r = post_fit(api, "cjk", npz_of(bank_members(**{"class_names.npy": names})))
    assert r.status_code == 422, r.text
    assert first_error(r)["loc"][-1] == "class_names[1]" or "class_names" in str(first_error(r)["loc"])


def test_a_bank_with_a_class_named_manifest_is_refused(api):
    names = np.asarray(["class_a", "manifest", "class_c"])
    r = post_fit(api, "reserved", npz_of(bank_members(**{"class_names.npy": names})))
    assert r.status_code == 422 and "reserved" in first_error(r)["msg"], r.text


def test_generate_refuses_a_300_byte_dataset_name(api):
    """``/generate`` answered 202 for it, and the worker failed three times with ``File name too long``."""
    r = api.post("/generate", json={"sample_id": "s", "dataset": CJK_100})
    assert r.status_code == 422, r.text
    assert any(e["loc"][-1] == "dataset" and "bytes" in e["msg"] for e in r.json()["detail"]), r.text


def test_an_nfd_class_name_finds_the_nfc_stored_class(api):
    """An NFD class name was stored as NFC, but ``/sample`` with the NFD form answered 422."""
    nfd = unicodedata.normalize("NFD", "café")
    names = np.asarray(["class_a", nfd, "class_c"])
    assert post_fit(api, "accents", npz_of(bank_members(**{"class_names.npy": names}))).status_code == 201
    for spelling in (nfd, unicodedata.normalize("NFC", "café")):
        r = api.post("/sample", json={"fit": "accents", "classes": [spelling], "n_per_class": 2})
        assert r.status_code == 200, r.text
        assert r.json()["class_index"] == [1, 1]


@pytest.fixture
def gallery(tmp_path, settings_env):
    root = tmp_path / "store"
    make_store(root, per_class=2)
    record = ImageRecord(
        image_id="t-0", class_index=0, class_name="thé", vector_id="v", sampler="s", seed=0, model="m", prompt="p"
    )
    ResultStore(root).write_image("café", record, Image.new("RGB", (8, 8)))  # NFC on disk
    settings_env(STORE=root)
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("segment", ["a" * 256, "猫" * 90, "x" * 5000])
def test_an_image_path_segment_over_255_bytes_is_404_not_500(gallery, segment):
    """An image path segment over 255 bytes gave 500 (``File name too long`` from the disk)."""
    for path in (f"{segment}/x.png", f"cat/{segment}.png", f"{segment}"):
        r = gallery.get(f"/datasets/blobs/images/{quote(path)}")
        assert r.status_code == 404, (path[:20], r.status_code, r.text[:200])
        assert gallery.get(f"/datasets/{quote(segment)}/images/{quote(path)}").status_code == 404
    assert gallery.get(f"/datasets/{quote(segment)}/gallery").status_code == 404


def test_store_reads_of_overlong_components_name_nothing(tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(FileNotFoundError):
        store.read_bytes("d/" + "猫" * 90 + "/x.png")


def test_nfd_dataset_and_class_in_gallery_urls_find_the_nfc_store(gallery):
    nfd_dataset, nfd_class = (unicodedata.normalize("NFD", s) for s in ("café", "thé"))
    r = gallery.get(f"/datasets/{quote(nfd_dataset)}/gallery")
    assert r.status_code == 200, r.text
    r = gallery.get(f"/datasets/{quote(nfd_dataset)}/images/{quote(nfd_class)}/t-0.png")
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG", r.text


HOSTILE_SEGMENTS = [
    "a" * 256,
    "猫" * 90,
    "%FF%FE",
    "%00",
    "%2E%2E",
    "x" * 20000,
    "%C0%AF",
    "manifest",
    "%F0%9F%98%80" * 70,
]


def test_no_route_answers_500_for_any_path_segment(gallery, redis_url):
    """An image path segment over 255 bytes gave 500; every route, every hostile segment, must stay below 500."""
    from fastapi.routing import APIRoute

    failures = []
    for route in gallery.app.routes:
        if not isinstance(route, APIRoute) or "{" not in route.path:
            continue
        for segment in HOSTILE_SEGMENTS:
            for template in (route.path, route.path.replace("{name}", "blobs")):
                path = re.sub(r"\{[^}]+\}", segment, template)
                for method in route.methods:
                    status = gallery.request(method, path).status_code
                    if status >= 500:
                        failures.append((method, path[:60], status))
    assert not failures, failures


def test_the_store_writes_nfd_names_under_their_nfc_spelling(tmp_path):
    nfd_dataset, nfd_class = (unicodedata.normalize("NFD", s) for s in ("café", "thé"))
    store = ResultStore(tmp_path)
    record = ImageRecord(
        image_id="t-0", class_index=0, class_name=nfd_class, vector_id="v", sampler="s", seed=0, model="m", prompt="p"
    )
    assert store.write_image(nfd_dataset, record, Image.new("RGB", (8, 8)))
    assert store.datasets() == ["café"] and (tmp_path / "café" / "thé" / "t-0.png").exists()
    (row,) = store.manifest_rows("café")
    assert row["dataset"] == "café" and row["path"] == "café/thé/t-0.png"
    assert store.verify(nfd_dataset).ok
