"""Spherical HMC: known answers (vMF and uniform on S^2 and S^d), Metropolis exactness, reduced == full dynamics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from oodsynth.bank import FeatureBank
from oodsynth.densities import ClassDensities, vmf_mean_resultant
from oodsynth.samplers import get_sampler
from oodsynth.samplers.anchor_classifier import margin_and_rival, unit_anchors
from oodsynth.samplers.sphere_hmc import full_dimensional_step, leapfrog, subspace_hmc


def vmf_target(kappa: float):
    """log pi(z) = kappa * mu.z with u = mu.z (k = 1); kappa = 0 is the uniform distribution."""
    return lambda u: (kappa * u[..., 0], np.full(u.shape, kappa))


def vmf_cdf_s2(kappa: float):
    """CDF of w = mu.z under vMF on S^2: density of w is proportional to exp(kappa w) on [-1, 1]."""
    if kappa == 0:
        return lambda w: (w + 1) / 2
    return lambda w: np.expm1(kappa * (w + 1)) / np.expm1(2 * kappa)


@pytest.mark.parametrize("kappa", [0.0, 2.0, 10.0])
@pytest.mark.parametrize("step", [0.3, 1.5])  # acceptance ~0.99 and ~0.7
def test_vmf_and_uniform_on_s2_match_the_exact_law(kappa, step):
    rng = np.random.default_rng(0)
    u0 = rng.uniform(-1, 1, size=(3000, 1))
    u, _, acc = subspace_hmc(
        u0, vmf_target(kappa), 3, step / np.sqrt(max(kappa, 1.0)), 100, 5, rng
    )  # 100: burn-in from the far tail
    assert stats.kstest(u[:, 0], vmf_cdf_s2(kappa)).pvalue > 1e-3
    assert acc.mean() > (0.97 if step == 0.3 else 0.5)


def test_without_the_metropolis_test_large_steps_are_biased():
    """The same large step, Metropolis test dropped: the law is visibly wrong (so the test above can fail)."""
    rng = np.random.default_rng(0)
    u0 = rng.uniform(-1, 1, size=(3000, 1))
    u, _, _ = subspace_hmc(u0, vmf_target(2.0), 3, 1.5 / np.sqrt(2.0), 40, 5, rng, accept_all=True)
    assert stats.kstest(u[:, 0], vmf_cdf_s2(2.0)).pvalue < 1e-10  # measured mean 0.22 against the exact 0.54


@pytest.mark.parametrize("dim, kappa", [(64, 50.0), (768, 2000.0)])
def test_vmf_in_high_dimension_has_the_theoretical_mean_resultant(dim, kappa):
    rng = np.random.default_rng(1)
    u0 = np.ones((2000, 1))  # all chains start at the mode; the adapting half is the burn-in
    u, _, acc = subspace_hmc(u0, vmf_target(kappa), dim, 0.5 / np.sqrt(kappa), 60, 8, rng, adapt_iters=30)
    w = u[:, 0]
    theory = float(vmf_mean_resultant(dim, kappa))
    assert abs(w.mean() - theory) < 4 * w.std() / np.sqrt(len(w)) + 1e-4  # measured 0.8264 vs 0.8264 (768-d)
    assert 0.6 < acc.mean() < 0.95


def test_reduced_coordinates_follow_the_full_dimensional_leapfrog():
    """Same start and momentum: the 4-coordinate trajectory is the D-dimensional one, projected."""
    rng = np.random.default_rng(2)
    D, n = 12, 50
    E = np.linalg.qr(rng.standard_normal((D, 2)))[0].T  # orthonormal rows (2, D)
    alpha, kappa, inv_w2 = np.array([0.3, -0.8]), 5.0, 40.0

    def log_prob_grad(u):
        m = u @ alpha
        grad = -inv_w2 * m[..., None] * alpha
        grad[..., 0] += kappa
        return kappa * u[..., 0] - 0.5 * inv_w2 * m**2, grad

    def ambient_grad(z):
        return log_prob_grad(z @ E.T)[1] @ E

    z0 = rng.standard_normal((n, D))
    z0 /= np.linalg.norm(z0, axis=1, keepdims=True)
    xi = rng.standard_normal((n, D))
    z1 = full_dimensional_step(z0, xi, ambient_grad, 0.05, 7)

    u0 = z0 @ E.T
    perp = z0 - u0 @ E
    rho = np.linalg.norm(perp, axis=1)
    e3 = perp / rho[:, None]
    xi_e = xi @ E.T
    xi_3 = (xi * e3).sum(1)
    xi_rest = np.linalg.norm(xi - xi_e @ E - xi_3[:, None] * e3, axis=1)
    q = np.column_stack([u0, rho, np.zeros(n)])
    p = np.column_stack([xi_e, xi_3, xi_rest])
    p -= (p * q).sum(1, keepdims=True) * q
    q1, _, _, _ = leapfrog(q, p, log_prob_grad, 2, 0.05, 7)
    np.testing.assert_allclose(q1[:, :2], z1 @ E.T, atol=1e-9)
    np.testing.assert_allclose(
        np.linalg.norm(q1[:, 2:], axis=1), np.linalg.norm(z1 - (z1 @ E.T) @ E, axis=1), atol=1e-9
    )


@pytest.fixture(scope="module")
def bank() -> FeatureBank:
    rng = np.random.default_rng(0)
    D, C, N = 64, 5, 200
    anchors = rng.standard_normal(D) + rng.standard_normal((C, D))
    anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
    feats = np.concatenate([a + 0.09 * rng.standard_normal((N, D)) for a in anchors])
    return FeatureBank.from_arrays(feats, np.repeat(np.arange(C), N), 0.38 * anchors)


def test_sphere_hmc_samples_lie_on_the_boundary_between_neighbouring_classes(bank):
    fit = ClassDensities("gaussian_diagonal").fit(bank)
    sampler = get_sampler("sphere_hmc", {"n_neighbors": 1})
    result = sampler.sample(fit, 400, seed=0)
    A = unit_anchors(bank.anchors)
    unit_bank = bank.features / np.linalg.norm(bank.features, axis=1, keepdims=True)
    id_margin = np.abs(margin_and_rival(unit_bank, bank.labels, A)[0])
    margin = result.diagnostics["margin"]
    # measured: mean |margin| 0.03 against 0.41 for the ID bank, about half on each side
    assert np.abs(margin).mean() < 0.25 * id_margin.mean()
    assert 0.25 < np.mean(margin < 0) < 0.75
    # they are outliers of their class: below almost every ID point in density
    assert np.median(result.diagnostics["id_percentile"]) < 5
    again = sampler.sample(fit, 400, seed=0)
    np.testing.assert_array_equal(again.vectors, result.vectors)
