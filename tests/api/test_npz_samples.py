"""Samples as .npz: the same numbers as the JSON answer, through the API, the client and the CLI."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from oodsynth.cli import app as cli_app
from oodsynth.cli import core as cli_core
from oodsynth.client import OodsynthClient, sample_arrays
from oodsynth.state.samples import StoredSample
from services.embed_sampler.app import create_app
from tests.helpers.toy_banks import toy_bank

NPZ = "application/x-npz"
REQUEST = {"fit": "toy", "method": "inverse_rejection", "n_per_class": 4, "seed": 3}


@pytest.fixture
def api(redis_url):
    with TestClient(create_app()) as client:
        r = client.post(
            "/fits",
            data={"name": "toy"},
            files={"file": ("bank.npz", toy_bank().to_bytes(), "application/octet-stream")},
        )
        assert r.status_code == 201, r.text
        yield client


def load(content: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(content), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_post_sample_as_npz_matches_the_json_answer(api):
    r = api.post("/sample", json=REQUEST, headers={"Accept": NPZ})
    assert r.status_code == 200 and r.headers["content-type"] == NPZ, r.text
    arrays = load(r.content)
    sample_id = StoredSample.from_bytes(r.content).sample_id
    as_json = api.get(f"/samples/{sample_id}").json()
    vectors, class_index, diagnostics = sample_arrays(as_json)
    assert arrays["vectors"].dtype == np.float32 and arrays["vectors"].shape == (12, 16)
    np.testing.assert_array_equal(arrays["vectors"], vectors)
    np.testing.assert_array_equal(arrays["class_index"], class_index)
    for name, values in diagnostics.items():
        np.testing.assert_allclose(arrays[f"diagnostics.{name}"], values, equal_nan=True)
    assert list(arrays["class_names"]) == ["class_a", "class_b", "class_c"]


def test_get_sample_honours_accept_and_format(api):
    sample_id = api.post("/sample", json=REQUEST).json()["sample_id"]
    by_accept = api.get(f"/samples/{sample_id}", headers={"Accept": NPZ})
    by_query = api.get(f"/samples/{sample_id}?format=npz")
    assert by_accept.headers["content-type"] == by_query.headers["content-type"] == NPZ
    assert by_accept.content == by_query.content
    assert api.get(f"/samples/{sample_id}?format=json", headers={"Accept": NPZ}).json()["sample_id"] == sample_id
    assert api.get(f"/samples/{sample_id}?format=xml").status_code == 422


def test_npz_is_smaller_than_json(api):
    big = {**REQUEST, "n_per_class": 100}
    as_npz = api.post("/sample", json=big, headers={"Accept": NPZ}).content
    as_json = api.post("/sample", json=big).content
    assert len(as_npz) * 2 < len(as_json)


def test_client_and_cli_use_npz(api, monkeypatch, tmp_path):
    client = OodsynthClient(http=api)
    stored = client.sample_npz("toy", "inverse_rejection", 4, seed=3, classes=["class_b"])
    assert stored.vectors.shape == (4, 16) and set(stored.class_index.tolist()) == {1}
    again = client.get_sample_npz(stored.sample_id)
    np.testing.assert_array_equal(again.vectors, stored.vectors)

    sent = []
    monkeypatch.setattr(cli_core, "_api_client", lambda url: OodsynthClient(url, http=api))
    api.event_hooks["request"].append(lambda request: sent.append(request.headers.get("accept")))
    out = tmp_path / "s.npz"
    r = CliRunner().invoke(
        cli_app,
        [
            "sample",
            "--fit",
            "toy",
            "--method",
            "inverse_rejection",
            "--n-per-class",
            "4",
            "--seed",
            "3",
            "--out",
            str(out),
            "--api",
            "http://testserver",
        ],
    )
    assert r.exit_code == 0, r.output
    assert NPZ in sent
    written = StoredSample.load(out)
    np.testing.assert_array_equal(written.vectors, client.get_sample_npz(written.sample_id).vectors)
