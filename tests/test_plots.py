"""t-SNE and image-grid PNGs from real banks, sample files and a real result store."""

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from oodsynth.bank import FeatureBank
from oodsynth.cli import app
from oodsynth.plots import plot_grid, tsne_embedding
from tests.helpers.stores import write_outliers


@pytest.fixture
def bank():
    rng = np.random.default_rng(0)
    anchors = rng.standard_normal((3, 16)).astype(np.float32)
    labels = np.repeat(np.arange(3), 30)
    feats = anchors[labels] / np.linalg.norm(anchors[labels], axis=1, keepdims=True) + 0.1 * rng.standard_normal(
        (90, 16)
    )
    return FeatureBank.from_arrays(
        feats / np.linalg.norm(feats, axis=1, keepdims=True), labels, anchors * 0.38, ["cat", "dog", "ship"]
    )


def test_tsne_keeps_classes_apart(bank):
    rng = np.random.default_rng(1)
    outliers = (rng.standard_normal((12, 16)).astype(np.float32), np.repeat(np.arange(3), 4))
    emb = tsne_embedding(bank, outliers, max_per_class=20, perplexity=10)
    assert emb["features"].shape == (60, 2) and emb["anchors"].shape == (3, 2) and emb["outliers"].shape == (12, 2)
    centers = np.stack([emb["features"][emb["feature_labels"] == c].mean(0) for c in range(3)])
    spread = np.mean([emb["features"][emb["feature_labels"] == c].std(0).mean() for c in range(3)])
    gaps = [np.linalg.norm(centers[i] - centers[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 2 * spread  # well-separated clusters stay separated in the picture
    with pytest.raises(ValueError, match="outliers"):
        tsne_embedding(bank, (np.zeros((4, 5)), np.zeros(4)))


def test_tsne_png_via_cli(bank, tmp_path):
    bank.save(tmp_path / "bank.npz")
    np.savez(
        tmp_path / "sample.npz",
        vectors=np.random.default_rng(2).standard_normal((9, 16)).astype(np.float32),
        class_index=np.repeat(np.arange(3), 3),
    )
    out = tmp_path / "figs" / "tsne.png"
    res = CliRunner().invoke(
        app,
        [
            "plot",
            "tsne",
            "--bank",
            str(tmp_path / "bank.npz"),
            "--sample",
            str(tmp_path / "sample.npz"),
            "--out",
            str(out),
            "--perplexity",
            "10",
        ],
    )
    assert res.exit_code == 0, res.output
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (800, 800)
    res = CliRunner().invoke(app, ["plot", "tsne", "--bank", str(tmp_path / "sample.npz"), "--out", str(out)])
    assert res.exit_code == 2 and "error: bank:" in res.output


def test_grid_from_store(tmp_path):
    write_outliers(tmp_path / "store", "blobs", 3, ["cat", "dog"], size=32)
    out = plot_grid(tmp_path / "store", "blobs", tmp_path / "grid.png", per_class=4)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1]  # 2 rows x 4 columns
    res = CliRunner().invoke(
        app, ["plot", "grid", "--store", str(tmp_path / "store"), "--dataset", "nope", "--out", str(tmp_path / "g.png")]
    )
    assert res.exit_code == 2 and "error: dataset:" in res.output
    res = CliRunner().invoke(
        app,
        [
            "plot",
            "grid",
            "--store",
            str(tmp_path / "store"),
            "--dataset",
            "blobs",
            "--classes",
            "bird",
            "--out",
            str(tmp_path / "g.png"),
        ],
    )
    assert res.exit_code == 2 and "error: classes:" in res.output
