"""Class densities: parameters recovered from draws with known values, calibrated percentiles, persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from oodsynth.bank import FeatureBank
from oodsynth.densities import DENSITY_KINDS, ClassDensities, log_bessel_iv
from oodsynth.sphere import sample_vmf
from tests.helpers.toy_banks import toy_bank


def _bank(features, labels, dim):
    n_classes = int(np.max(labels)) + 1
    anchors = np.eye(n_classes, dim, dtype=np.float32) * 0.38
    return FeatureBank.from_arrays(np.asarray(features, np.float32), np.asarray(labels), anchors)


def _tangent_gaussian(rng, n, dim, variances, direction=0):
    """Points e_direction + N(0, diag(variances)) in the other coordinates (then projected by the fit)."""
    X = np.zeros((n, dim))
    X[:, direction] = 1.0
    others = [d for d in range(dim) if d != direction]
    X[:, others] += rng.standard_normal((n, dim - 1)) * np.sqrt(variances)
    return X


@pytest.mark.parametrize("dim,kappa,n", [(64, 200.0, 3000), (768, 5000.0, 2000), (768, 9400.0, 2000)])
def test_vmf_kappa_recovered_from_vmf_draws(dim, kappa, n):
    rng = np.random.default_rng(1)
    mu = np.zeros(dim)
    mu[3] = 1.0
    X = sample_vmf(mu[None], np.array([kappa]), n, rng)[0]
    fit = ClassDensities("vmf").fit(_bank(X, np.zeros(n, int), dim))
    assert abs(fit.family.kappa_[0] / kappa - 1) < 0.03
    assert fit.means_[0] @ mu > 0.99
    # the log-density is scipy's vMF log-density for the fitted parameters
    Y = X[:50]
    expected = stats.vonmises_fisher(fit.means_[0], fit.family.kappa_[0]).logpdf(Y)
    np.testing.assert_allclose(fit.score_samples(Y, np.zeros(50, int)), expected, rtol=1e-9, atol=1e-6)


def test_our_vmf_draws_match_scipy():
    rng = np.random.default_rng(2)
    mu = np.zeros(128)
    mu[0] = 1.0
    ours = sample_vmf(mu[None], np.array([300.0]), 1000, rng)[0] @ mu
    ref = stats.vonmises_fisher(mu, 300.0).rvs(1000, random_state=rng) @ mu
    assert stats.ks_2samp(ours, ref).pvalue > 0.01


def test_log_bessel_is_finite_and_continuous_in_768d():
    x = np.geomspace(1.0, 1e5, 400)
    v = 383.0
    out = log_bessel_iv(v, x)
    assert np.isfinite(out).all() and (np.diff(out) > 0).all()
    from scipy.special import ive

    ok = ive(v, x) > 1e-250  # where scipy alone is fine, agree with it
    np.testing.assert_allclose(out[ok], np.log(ive(v, x[ok])) + x[ok], rtol=1e-10)
    # the asymptotic branch joins the exact one without a jump
    edge = np.flatnonzero(~ok)[-1]
    assert (
        abs(out[edge + 1] - out[edge] - (out[edge + 2] - out[edge + 1]))
        < 0.05 * abs(out[edge + 2] - out[edge + 1]) + 1e-6
    )


def test_gaussian_variances_recovered():
    rng = np.random.default_rng(3)
    dim, n = 32, 4000
    variances = 1e-4 * rng.uniform(0.5, 2.0, dim - 1)
    X = _tangent_gaussian(rng, n, dim, variances)
    labels = np.zeros(n, int)
    scale = 1.0 / (1.0 + variances.sum())  # projection onto the sphere shrinks the tangent spread

    iso = ClassDensities("gaussian_isotropic").fit(_bank(X, labels, dim))
    assert abs(iso.summary()["classes"][0]["variance"] / (variances.sum() * scale / dim) - 1) < 0.03

    diag = ClassDensities("gaussian_diagonal").fit(_bank(X, labels, dim))
    rel = diag.family.diag_[0, 1:] / (variances * scale) - 1
    assert np.median(np.abs(rel)) < 0.04 and np.abs(rel).max() < 0.15
    assert diag.family.diag_[0, 0] < 1e-6  # the radial direction has (almost) no variance on the sphere


def test_full_covariance_recovered_and_logpdf_is_the_gaussian():
    rng = np.random.default_rng(4)
    dim, n = 12, 6000
    A = rng.standard_normal((dim - 1, dim - 1))
    cov = 1e-4 * (A @ A.T / dim + 0.1 * np.eye(dim - 1))
    X = np.zeros((n, dim))
    X[:, 0] = 1.0
    X[:, 1:] = rng.multivariate_normal(np.zeros(dim - 1), cov, n)
    fit = ClassDensities("gaussian_full").fit(_bank(X, np.zeros(n, int), dim))
    V = fit.family.basis_[0].astype(np.float64)
    sigma = np.diag(fit.family.diag_[0]) + V @ np.diag(fit.family.eig_[0] - fit.family.diag_[0, 0]) @ V.T
    assert np.linalg.norm(sigma[1:, 1:] - cov) / np.linalg.norm(cov) < 0.08
    unit = X[:20] / np.linalg.norm(X[:20], axis=1, keepdims=True)
    expected = stats.multivariate_normal(fit.centers_[0], sigma).logpdf(unit)
    np.testing.assert_allclose(fit.score_samples(X[:20], np.zeros(20, int)), expected, rtol=1e-5)


@pytest.mark.parametrize("kind", DENSITY_KINDS)
def test_percentile_is_monotone_and_uniform_on_held_out_id(kind):
    rng = np.random.default_rng(5)
    dim = 48
    variances = [1e-3 * rng.uniform(0.3, 3.0, dim - 1), 1e-5 * rng.uniform(0.3, 3.0, dim - 1)]
    train = [_tangent_gaussian(rng, 800, dim, v, direction=c) for c, v in enumerate(variances)]
    test = [_tangent_gaussian(rng, 1500, dim, v, direction=c) for c, v in enumerate(variances)]
    fit = ClassDensities(kind).fit(_bank(np.concatenate(train), np.repeat([0, 1], 800), dim))
    for c in range(2):
        labels = np.full(1500, c)
        logp = fit.score_samples(test[c], labels)
        pct = fit.percentile(logp, labels)
        order = np.argsort(logp)
        assert (np.diff(pct[order]) >= 0).all() and pct.min() >= 0 and pct.max() <= 100
        assert stats.kstest(pct / 100, "uniform").statistic < 0.07, kind  # 800 ID points set the quantiles
    # percentile and its inverse agree
    q = fit.logpdf_at_percentile(5.0, [0, 1])
    np.testing.assert_allclose(fit.percentile(q, np.array([0, 1])), [5.0, 5.0], atol=1e-9)


def test_in_sample_quantiles_would_be_miscalibrated_for_full_covariance():
    """Why quantiles are cross-fitted: a shrunk full covariance flatters its own training points."""
    rng = np.random.default_rng(6)
    dim, n = 128, 150
    variances = 1e-4 * rng.uniform(0.3, 3.0, dim - 1)
    bank = _bank(_tangent_gaussian(rng, n, dim, variances), np.zeros(n, int), dim)
    held_out = _tangent_gaussian(rng, 1000, dim, variances)
    labels = np.zeros(1000, int)
    naive = ClassDensities("gaussian_full", calibration_folds=0).fit(bank)
    crossfit = ClassDensities("gaussian_full").fit(bank)
    assert np.median(naive.percentile(naive.score_samples(held_out, labels), labels)) < 15
    assert 35 < np.median(crossfit.percentile(crossfit.score_samples(held_out, labels), labels)) < 65


@pytest.mark.parametrize("kind", DENSITY_KINDS)
def test_fresh_id_draws_are_calibrated_on_an_anisotropic_spectrum(kind):
    """Quantiles must describe the full-data model that score_samples uses, not the smaller fold models.

    With variances spread over two decades, a shrunk full covariance fitted on 4/5 of
    the points scores held-out points much lower than the full model scores fresh ones;
    plain 5-fold quantiles put fresh ID draws at a mean percentile near 60 (768-d: ~70).
    """
    rng = np.random.default_rng(11)
    dim, n, m = 128, 400, 3000
    variances = [np.logspace(-5, -3, dim - 1)[rng.permutation(dim - 1)] for _ in range(2)]
    train = [_tangent_gaussian(rng, n, dim, v, direction=c) for c, v in enumerate(variances)]
    fresh = [_tangent_gaussian(rng, m, dim, v, direction=c) for c, v in enumerate(variances)]
    fit = ClassDensities(kind).fit(_bank(np.concatenate(train), np.repeat([0, 1], n), dim))
    for c in range(2):
        labels = np.full(m, c)
        pct = fit.percentile(fit.score_samples(fresh[c], labels), labels)
        assert abs(pct.mean() - 50) < 8, (kind, c, pct.mean())
        assert 0.02 <= (pct < 5).mean() <= 0.09, (kind, c, (pct < 5).mean())
    # the band edges the samplers compare with log_density_stack sit at the same percentiles
    edges = fit.logpdf_at_percentile(5.0, [0, 1])
    np.testing.assert_allclose(fit.percentile(edges, np.array([0, 1])), [5.0, 5.0], atol=1e-9)


@pytest.mark.parametrize("kind", DENSITY_KINDS)
def test_round_trip_bytes_and_summary(kind):
    rng = np.random.default_rng(7)
    X = np.concatenate([_tangent_gaussian(rng, 50, 16, 1e-3 * np.ones(15), direction=c) for c in range(3)])
    labels = np.repeat(np.arange(3), 50)
    fit = ClassDensities(kind).fit(_bank(X, labels, 16))
    again = ClassDensities.from_bytes(fit.to_bytes())
    assert (again.kind, again.dim, again.n_classes, again.class_names_) == (kind, 16, 3, fit.class_names_)
    np.testing.assert_allclose(again.score_samples(X, labels), fit.score_samples(X, labels), rtol=1e-12)
    np.testing.assert_array_equal(again.anchors_, fit.anchors_)
    summary = json.loads(json.dumps(fit.summary()))
    assert summary["kind"] == kind and summary["dim"] == 16 and len(summary["classes"]) == 3
    entry = summary["classes"][1]
    assert entry["index"] == 1 and entry["n"] == 50 and ("kappa" in entry) == (kind == "vmf")
    qs = entry["logpdf_quantiles"]
    assert list(qs) == ["0.01", "0.05", "0.5", "0.95", "0.99"] and list(qs.values()) == sorted(qs.values())
    X2, y2 = fit.sample(4, classes=[2], seed=0)
    assert X2.shape == (4, 16) and (y2 == 2).all() and np.allclose(np.linalg.norm(X2, axis=1), 1)


def test_errors_name_the_field():
    rng = np.random.default_rng(8)
    fit = ClassDensities().fit(_bank(_tangent_gaussian(rng, 20, 8, 1e-3 * np.ones(7)), np.zeros(20, int), 8))
    with pytest.raises(ValueError, match="^density: unknown density kind 'kde'"):
        ClassDensities("kde")
    with pytest.raises(ValueError, match="n_quantiles"):
        ClassDensities("vmf", n_quantiles=1)
    with pytest.raises(ValueError, match="shrinkage"):
        ClassDensities("gaussian_full", shrinkage="magic")
    with pytest.raises(ValueError, match=r"^X: expected shape \(M, 8\)"):
        fit.score_samples(np.ones((2, 7)), [0, 0])
    with pytest.raises(ValueError, match="^X: contains NaN"):
        fit.score_samples(np.full((1, 8), np.nan), [0])
    with pytest.raises(ValueError, match="^classes: class index 3 is out of range"):
        fit.score_samples(np.ones((1, 8)), [3])
    with pytest.raises(ValueError, match="^fit: not a serialised"):
        ClassDensities.from_bytes(_bank(np.ones((2, 8)), [0, 0], 8).to_bytes())
    with pytest.raises(RuntimeError, match="not fitted"):
        ClassDensities().score_samples(np.ones((1, 8)), [0])


def test_a_new_family_is_one_class_plus_one_registry_entry(monkeypatch):
    """A family registered in FAMILIES fits, scores, summarises and round-trips through ClassDensities."""
    from oodsynth.densities import FAMILIES
    from oodsynth.densities.families import Gaussian

    class FixedSpread(Gaussian):  # a made-up family: isotropic with a fixed variance
        kind = "fixed_spread"

        def covariance(self, centered):
            d = centered.shape[1]
            return np.full(d, 0.01), np.zeros((d, 0)), np.zeros(0)

    monkeypatch.setitem(FAMILIES, FixedSpread.kind, FixedSpread)
    bank = toy_bank(3, 40, 16)
    fit = ClassDensities(kind="fixed_spread").fit(bank)
    assert fit.summary()["classes"][0]["variance"] == pytest.approx(0.01)
    x = bank.features[:5].astype(np.float64)
    expected = stats.multivariate_normal(fit.centers_[0], 0.01 * np.eye(16)).logpdf(x)
    np.testing.assert_allclose(fit.score_samples(x, [0] * 5), expected, rtol=1e-7)
    again = ClassDensities.from_bytes(fit.to_bytes())
    np.testing.assert_array_equal(again.score_samples(x, [0] * 5), fit.score_samples(x, [0] * 5))


@pytest.mark.parametrize("shape", [(60, 96), (300, 96), (12, 96)])
def test_principal_axes_match_the_svd(shape):
    """The full Gaussian's axes come from the smaller Gram matrix: the same variances and axes as the SVD."""
    from oodsynth.densities.families import _principal_axes

    rng = np.random.default_rng(0)
    X = rng.standard_normal(shape) * np.linspace(0.05, 3.0, shape[1])
    X -= X.mean(axis=0)
    power, basis = _principal_axes(X)
    _, sv, vt = np.linalg.svd(X, full_matrices=False)
    rank = min(shape[0] - 1, shape[1])  # centring removes one dimension when n <= D
    assert power.shape == (rank,) and basis.shape == (shape[1], rank)
    np.testing.assert_allclose(power, sv[:rank] ** 2, rtol=1e-10)
    np.testing.assert_allclose(basis.T @ basis, np.eye(rank), atol=1e-10)
    np.testing.assert_allclose(np.abs((basis * vt[:rank].T).sum(axis=0)), 1.0, atol=1e-10)  # same axes, up to sign
