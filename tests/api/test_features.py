"""POST /features through the real app: 503 without an encoder, features and classes with one."""

import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from oodsynth.config import get_settings
from oodsynth.data import load_dataset


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def checkpoint(digits_lab_assets):
    """The session's digits encoder (trained once, shared with the OOD lab tests)."""
    return digits_lab_assets.encoder_path, digits_lab_assets.encoder


@pytest.fixture
def client(redis_url):
    from services.embed_sampler.app import create_app

    return TestClient(create_app())


def test_503_without_encoder(client):
    r = client.post("/features", files=[("files", ("a.png", png(np.zeros((16, 16, 3), np.uint8)), "image/png"))])
    assert r.status_code == 503
    assert r.json()["detail"][0]["loc"] == ["encoder_checkpoint"]
    assert "OODSYNTH_ENCODER_CHECKPOINT" in r.json()["detail"][0]["msg"]


@pytest.mark.slow  # the digits encoder is trained for it
def test_features_and_nearest_anchor(client, checkpoint, monkeypatch):
    path, ckpt = checkpoint
    monkeypatch.setenv("OODSYNTH_ENCODER_CHECKPOINT", str(path))
    get_settings.cache_clear()
    test = load_dataset("digits", "test")
    idx = [0, 1, 2, 3, 50, 100]
    # the test images as 8-bit PNGs, sent at 32x32: the route resizes to the encoder's 16x16
    arrays = [(test.dataset[i][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for i in idx]
    files = [
        ("files", (f"{i}.png", png(np.asarray(Image.fromarray(a).resize((32, 32)))), "image/png"))
        for i, a in zip(idx, arrays)
    ]
    r = client.post("/features", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dim"] == ckpt.anchors.shape[1] and body["class_names"] == test.class_names
    assert len(body["items"]) == len(idx)
    feats = np.array([it["features"] for it in body["items"]])
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)
    # same answer as the library on the same (resized) pixels
    with torch.no_grad():
        x = torch.stack(
            [torch.from_numpy(np.array(Image.fromarray(a).resize((32, 32)))).permute(2, 0, 1) for a in arrays]
        )
        x = torch.nn.functional.interpolate(x.float() / 255, size=(16, 16), mode="bilinear", antialias=True)
        ref = ckpt.model.cpu().embed(x).numpy()
    assert np.all(np.sum(feats * ref, axis=1) > 0.99)
    a = ckpt.anchors / np.linalg.norm(ckpt.anchors, axis=1, keepdims=True)
    assert [it["class_index"] for it in body["items"]] == (feats @ a.T).argmax(1).tolist()
    assert all(it["class_name"] == test.class_names[it["class_index"]] for it in body["items"])
    np.testing.assert_allclose([it["cosine"] for it in body["items"]], (feats @ a.T).max(1), atol=1e-5)


@pytest.mark.slow  # the digits encoder is trained for it
def test_bad_image_names_the_file(client, checkpoint, monkeypatch):
    monkeypatch.setenv("OODSYNTH_ENCODER_CHECKPOINT", str(checkpoint[0]))
    get_settings.cache_clear()
    good = ("files", ("ok.png", png(np.zeros((16, 16, 3), np.uint8)), "image/png"))
    r = client.post("/features", files=[good, ("files", ("bad.png", b"not an image", "image/png"))])
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "files", 1] and "bad.png" in r.json()["detail"][0]["msg"]
    r = client.post("/features")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "files"
