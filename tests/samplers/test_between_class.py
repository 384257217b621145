"""Between-class samplers: boundary crossing (BOOD) and class interpolation, on a bank with a real anchor classifier."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest

from oodsynth.bank import FeatureBank
from oodsynth.densities import ClassDensities
from oodsynth.samplers import get_sampler
from oodsynth.samplers.anchor_classifier import margin_and_rival, unit_anchors
from oodsynth.samplers.boundary_crossing import crossing_walk, stepwise_crossing
from oodsynth.samplers.geodesic import slerp

DIM, C, N = 64, 5, 200


@pytest.fixture(scope="module")
def bank() -> FeatureBank:
    """Five classes whose anchors are correlated (cos ~0.5), features spread so that classes touch."""
    rng = np.random.default_rng(0)
    common = rng.standard_normal(DIM)
    anchors = common + rng.standard_normal((C, DIM))
    anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
    feats = np.concatenate([a + 0.09 * rng.standard_normal((N, DIM)) for a in anchors])
    return FeatureBank.from_arrays(feats, np.repeat(np.arange(C), N), 0.38 * anchors)


@pytest.fixture(scope="module")
def fit(bank) -> ClassDensities:
    return ClassDensities("gaussian_diagonal").fit(bank)


def _bank_margins(bank):
    A = unit_anchors(bank.anchors)
    unit = bank.features / np.linalg.norm(bank.features, axis=1, keepdims=True)
    return margin_and_rival(unit, bank.labels, A)[0]


def test_every_crossed_vector_leaves_its_source_class_and_sits_near_the_boundary(bank, fit):
    result = get_sampler("boundary_crossing").sample(fit, 400, seed=0, bank=bank)
    A = unit_anchors(bank.anchors)
    unit = result.vectors / np.linalg.norm(result.vectors, axis=1, keepdims=True)
    predicted = (unit @ A.T).argmax(axis=1)
    assert (predicted != result.class_index).all()  # every vector is classified differently from its source
    margin = result.diagnostics["margin"]
    assert (margin < 0).all()
    np.testing.assert_array_equal(result.diagnostics["target_class"], predicted)
    id_margin = np.abs(_bank_margins(bank))
    # measured with the defaults (8 steps of 0.02 rad past the flip): mean |margin| 0.18 against 0.41 for the ID bank
    assert np.abs(margin).mean() < 0.5 * id_margin.mean()
    # two steps past the flip (the first default): 0.053, below the closest tenth of the ID bank
    close = get_sampler("boundary_crossing", {"steps_beyond": 2}).sample(fit, 400, seed=0, bank=bank)
    assert np.abs(close.diagnostics["margin"]).mean() < 0.25 * id_margin.mean()
    assert np.median(np.abs(close.diagnostics["margin"])) < np.quantile(id_margin, 0.1)


def test_steps_beyond_push_deeper_and_the_closed_form_is_the_stepwise_walk(bank, fit):
    near = get_sampler("boundary_crossing", {"steps_beyond": 0}).sample(fit, 200, seed=1, bank=bank)
    far = get_sampler("boundary_crossing", {"steps_beyond": 5}).sample(fit, 200, seed=1, bank=bank)
    assert far.diagnostics["margin"].mean() < near.diagnostics["margin"].mean() < 0

    rng = np.random.default_rng(2)
    A = unit_anchors(bank.anchors)
    unit = bank.features / np.linalg.norm(bank.features, axis=1, keepdims=True)
    x0 = unit[bank.labels == 0][rng.choice(N, 64)]
    d = A[margin_and_rival(x0, 0, A)[1]] - A[0]
    for step, beyond in [(0.01, 0), (0.03, 3), (0.2, 1)]:
        closed, steps = crossing_walk(x0, d, step, beyond)
        np.testing.assert_allclose(closed, stepwise_crossing(x0, d, step, beyond), atol=2e-5)
        assert (np.einsum("nd,nd->n", closed, d) > 0).all() and (steps >= beyond).all()


def test_boundary_crossing_is_seeded_and_validated(bank, fit):
    sampler = get_sampler("boundary_crossing", {"select": 10, "jitter": 0.05})
    a = sampler.sample(fit, 30, seed=5, bank=bank, classes=[3])
    b = sampler.sample(fit, 30, seed=5, bank=bank, classes=[3])
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert len(np.unique(a.vectors.round(5), axis=0)) == 30  # jitter makes every vector distinct
    with pytest.raises(pydantic.ValidationError, match="step_size"):
        get_sampler("boundary_crossing", {"step_size": 0})
    with pytest.raises(ValueError, match="^bank: the boundary_crossing sampler needs"):
        sampler.sample(fit, 3)


def test_slerp_is_the_geodesic(bank):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 50, 8))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    lam = rng.uniform(size=50)
    p = slerp(a, b, lam)
    angle = np.arccos(np.clip(np.einsum("nd,nd->n", a, b), -1, 1))
    np.testing.assert_allclose(np.arccos(np.clip(np.einsum("nd,nd->n", a, p), -1, 1)), lam * angle, atol=1e-6)
    np.testing.assert_allclose(np.arccos(np.clip(np.einsum("nd,nd->n", p, b), -1, 1)), (1 - lam) * angle, atol=1e-6)
    np.testing.assert_allclose(slerp(a, a, lam), a, atol=1e-7)


def test_class_interpolation_lies_between_a_class_and_its_neighbours(bank, fit):
    result = get_sampler("class_interpolation", {"lam_range": [0.4, 0.6], "n_neighbors": 2}).sample(
        fit, 300, seed=0, bank=bank
    )
    A = unit_anchors(bank.anchors)
    unit = result.vectors / np.linalg.norm(result.vectors, axis=1, keepdims=True)
    own = np.einsum("nd,nd->n", unit, A[result.class_index])
    # closer to the boundary than the ID bank, and on both sides of it (midpoints, no classifier)
    assert np.abs(result.diagnostics["margin"]).mean() < 0.5 * np.abs(_bank_margins(bank)).mean()
    assert 0.2 < np.mean(result.diagnostics["margin"] < 0) < 0.8
    means = fit.means_
    sim = means @ means.T
    np.fill_diagonal(sim, -np.inf)
    nearest2 = np.argsort(-sim, axis=1)[:, :2]
    partner_side = [
        t in nearest2[c] for c, t in zip(result.class_index, result.diagnostics["target_class"].astype(int))
    ]
    assert np.mean(partner_side) > 0.9  # the best other class is one of the two partners
    assert (
        own.mean()
        < np.einsum(
            "nd,nd->n", bank.features / np.linalg.norm(bank.features, axis=1, keepdims=True), A[bank.labels]
        ).mean()
    )
    with pytest.raises(pydantic.ValidationError, match="lam_range"):
        get_sampler("class_interpolation", {"lam_range": [0.7, 0.2]})
