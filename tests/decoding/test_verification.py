"""Verified outliers: re-encoded real ID images sit inside the fit, noise images fall below every class."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oodsynth.data import load_dataset
from oodsynth.decoding.verification import MANIFEST_PREFIX, VERIFICATION_KEYS, verify_images


@pytest.mark.slow  # the digits encoder is trained for it
def test_id_images_verify_as_id_and_noise_as_outliers(digits_lab_assets):
    assets = digits_lab_assets
    test = load_dataset("digits", "test")
    id_images = test.dataset.tensors[0][:200]
    noise = torch.rand(100, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    real, fake = verify_images(assets.encoder, assets.fit, id_images), verify_images(assets.encoder, assets.fit, noise)
    print(
        f"median ID percentile: test digits {np.median(real.id_percentile):.1f}, "
        f"noise {np.median(fake.id_percentile):.1f}"
    )
    # held-out ID images land well inside the fit (calibrated: uniform for training images)
    assert np.median(real.id_percentile) > 15
    # noise is below the 1st ID percentile of every class
    assert np.median(fake.id_percentile) < 1
    assert real.passes(5).mean() < 0.3 and fake.passes(5).mean() > 0.9
    # the encoder's own classifier is confident on ID images, and its class agrees with the densest class mostly
    assert np.all((real.max_softmax > 1 / 8) & (real.max_softmax <= 1))
    assert np.all((real.margin >= 0) & (real.margin <= 2))  # top-1 minus top-2 anchor cosine
    labels = test.dataset.tensors[1][:200].numpy()
    assert np.mean(real.id_class == labels) > 0.5
    fields = real.manifest_fields(0)
    assert set(fields) == {MANIFEST_PREFIX + k for k in VERIFICATION_KEYS}


@pytest.mark.slow  # the digits encoder is trained for it
def test_verification_checks_its_inputs(digits_lab_assets):
    assets = digits_lab_assets
    v = verify_images(assets.encoder, assets.fit, torch.rand(4, 3, 28, 28))  # other sizes are resized
    assert len(v) == 4
    with pytest.raises(ValueError, match="max_id_percentile"):
        v.passes(101)
    from oodsynth.densities import ClassDensities
    from tests.helpers.toy_banks import toy_bank

    other = ClassDensities("vmf").fit(toy_bank(n_classes=3, dim=16))
    with pytest.raises(ValueError, match="fit"):
        verify_images(assets.encoder, other, torch.rand(2, 3, 16, 16))


def _store_with_verification(root, percentiles):
    """One class ("zero"); image i verified at ``percentiles[i]`` (None: no verification fields)."""
    from tests.helpers.stores import write_verified_images

    verified = [
        {} if pct is None else {"verified_id_percentile": pct, "verified_id_class": 0, "verified_max_softmax": 0.5}
        for pct in percentiles
    ]
    return write_verified_images(root, verified, class_names=["zero"])


def test_stored_outliers_keep_only_verified(tmp_path):
    from oodsynth.errors import InputError
    from oodsynth.training.outlier_dataset import StoredOutliers

    _store_with_verification(tmp_path / "store", [0.0, 3.0, 10.0, 40.0, 90.0])
    assert len(StoredOutliers(tmp_path / "store", "dec")) == 5
    kept = StoredOutliers(tmp_path / "store", "dec", max_id_percentile=10.0)
    assert sorted(r.image_id for r in kept.records) == ["img-0", "img-1", "img-2"]
    assert len(kept.targets) == 3
    _store_with_verification(tmp_path / "old", [5.0, None])
    with pytest.raises(InputError, match="1 of 2 images carry no verified_id_percentile") as info:
        StoredOutliers(tmp_path / "old", "dec", max_id_percentile=10.0)
    assert info.value.field == "max_id_percentile"


def test_stored_outliers_auto_threshold(tmp_path):
    """auto (train-ood's default): the measured threshold when every image is verified, else every image."""
    from oodsynth.decoding.verification import DEFAULT_MAX_ID_PERCENTILE
    from oodsynth.training.outlier_dataset import StoredOutliers

    pcts = [0.0, DEFAULT_MAX_ID_PERCENTILE, DEFAULT_MAX_ID_PERCENTILE + 0.5, 90.0]
    _store_with_verification(tmp_path / "store", pcts)
    auto = StoredOutliers(tmp_path / "store", "dec", max_id_percentile="auto")
    assert (
        sorted(r.image_id for r in auto.records) == ["img-0", "img-1"] and auto.threshold == DEFAULT_MAX_ID_PERCENTILE
    )
    assert auto.verification == f"2 of 4 images verified at ID percentile <= {DEFAULT_MAX_ID_PERCENTILE:g}"
    _store_with_verification(tmp_path / "old", [5.0, None, 99.0])
    mixed = StoredOutliers(tmp_path / "old", "dec", max_id_percentile="auto")
    assert len(mixed) == 3 and mixed.threshold is None and "carry no verification" in mixed.verification


def test_train_ood_cli_max_id_percentile(tmp_path):
    from typer.testing import CliRunner

    from oodsynth.cli import app

    _store_with_verification(tmp_path / "store", [50.0, 60.0])
    res = CliRunner().invoke(
        app,
        [
            "train-ood",
            "--out",
            str(tmp_path / "run"),
            "--dataset",
            "digits",
            "--store",
            str(tmp_path / "store"),
            "--outliers",
            "dec",
            "--max-id-percentile",
            "10",
            "--epochs",
            "1",
            "--width",
            "4",
        ],
    )
    assert res.exit_code == 2 and "max_id_percentile" in res.output and "verified at ID percentile <= 10" in res.output


@pytest.mark.slow  # the digits encoder is trained for it
def test_decode_job_records_verification_in_the_manifest(redis_url, tiny_sd, digits_lab_assets, monkeypatch, tmp_path):
    from oodsynth.config import get_settings
    from oodsynth.errors import NotFound
    from oodsynth.queue.payloads import DecodeJob, build_items
    from oodsynth.samplers import get_sampler
    from oodsynth.state.fits import FitRegistry
    from oodsynth.state.redis_conn import get_redis
    from oodsynth.store.results import ResultStore
    from oodsynth.worker.decode_job import DecoderCache, run_decode_job

    assets = digits_lab_assets
    monkeypatch.setenv("OODSYNTH_MODEL", str(tiny_sd))
    monkeypatch.setenv("OODSYNTH_DEVICE", "cpu")
    monkeypatch.setenv("OODSYNTH_ENCODER_CHECKPOINT", str(assets.encoder_path))
    get_settings.cache_clear()
    settings = get_settings()
    FitRegistry(get_redis()).put("digits-lab", assets.fit, assets.bank)
    sample = get_sampler("knn_boundary").sample(assets.fit, 1, seed=0, bank=assets.bank)
    decode = {"steps": 2, "height": 32, "width": 32, "output_size": 16}
    items = build_items(
        dataset="dec",
        vectors=sample.vectors,
        class_index=sample.class_index,
        class_names=assets.fit.class_names_,
        vector_ids=[f"s:{i}" for i in range(len(sample))],
        sampler="knn_boundary",
        diagnostics=sample.diagnostics,
        seed=0,
        decode=decode,
        model=str(tiny_sd),
    )
    job = DecodeJob(dataset="dec", model=str(tiny_sd), items=items, verify_fit="digits-lab", **decode)
    assert run_decode_job(job.model_dump(), settings, DecoderCache())["written"] == 8
    store = ResultStore(settings.store)
    records = store.records("dec")
    pct = np.array([r.diagnostics["verified_id_percentile"] for r in records])
    assert len(records) == 8 and ((0 <= pct) & (pct <= 100)).all()
    assert all("id_percentile" in r.diagnostics for r in records)  # the vector's own diagnostics stay
    # the recorded numbers are those of the stored images
    again = verify_images(assets.encoder, assets.fit, [store.open_image(r.path).convert("RGB") for r in records])
    np.testing.assert_allclose(again.id_percentile, pct, atol=1e-6)
    # a job naming a fit that does not exist fails with the field named
    bad = DecodeJob(dataset="dec2", model=str(tiny_sd), items=items, verify_fit="no-such-fit", **decode)
    with pytest.raises(NotFound) as info:
        run_decode_job(bad.model_dump(), settings, DecoderCache())
    assert info.value.field == "verify_fit"
