"""Verified outliers: re-encoded real ID images sit inside the fit, noise images fall below every class."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oodsynth.data import load_dataset
from oodsynth.verification import MANIFEST_PREFIX, VERIFICATION_KEYS, verify_images


def test_id_images_verify_as_id_and_noise_as_outliers(digits_lab_assets):
    assets = digits_lab_assets
    test = load_dataset("digits", "test")
    id_images = test.dataset.tensors[0][:200]
    noise = torch.rand(100, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    real, fake = verify_images(assets.encoder, assets.fit, id_images), verify_images(assets.encoder, assets.fit, noise)
    print(f"median ID percentile: test digits {np.median(real.id_percentile):.1f}, noise {np.median(fake.id_percentile):.1f}")
    # held-out ID images land well inside the fit (calibrated: uniform for training images)
    assert np.median(real.id_percentile) > 15
    # noise is below the 1st ID percentile of every class
    assert np.median(fake.id_percentile) < 1
    assert real.passes(5).mean() < 0.3 and fake.passes(5).mean() > 0.9
    # the encoder's own classifier is confident on ID images, and its class agrees with the densest class mostly
    assert np.all((real.max_softmax > 1 / 8) & (real.max_softmax <= 1))
    labels = test.dataset.tensors[1][:200].numpy()
    assert np.mean(real.id_class == labels) > 0.5
    fields = real.manifest_fields(0)
    assert set(fields) == {MANIFEST_PREFIX + k for k in VERIFICATION_KEYS}


def test_verification_checks_its_inputs(digits_lab_assets):
    assets = digits_lab_assets
    v = verify_images(assets.encoder, assets.fit, torch.rand(4, 3, 28, 28))  # other sizes are resized
    assert len(v) == 4
    with pytest.raises(ValueError, match="max_id_percentile"):
        v.passes(101)
    from oodsynth.densities import ClassDensities
    from toy_banks import toy_bank

    other = ClassDensities("vmf").fit(toy_bank(n_classes=3, dim=16))
    with pytest.raises(ValueError, match="fit"):
        verify_images(assets.encoder, other, torch.rand(2, 3, 16, 16))
