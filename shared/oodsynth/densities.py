"""Class-conditional densities on the unit sphere: what a "fit" is.

One density per class (von Mises-Fisher or a Gaussian with isotropic,
diagonal or shrunk full covariance), scikit-learn style. Raw log-densities in
768-d are numbers like +2,900 that mean nothing on their own, so every fit also
records the quantiles of its ID log-densities (cross-fitted: each point is
scored by a model that did not see it, then extrapolated from the fold models'
training size to the full model's, so that fresh ID draws scored by the full
model land uniformly in [0, 100]) and reports any vector's outlierness as an ID
percentile.

Every covariance is kept in one spectral form per class,
``Sigma = diag(d) + V diag(lam - f) V^T`` with orthonormal ``V`` (D, r) and a
constant floor ``f = d``: isotropic and diagonal have ``r = 0``; full-with-
shrinkage is exact in this form because a shrunk covariance ``(1-s) S + s mu I``
equals ``s mu`` outside the span of the data. Any power ``Sigma^p g`` (for
whitening and preconditioned samplers) then costs two thin matrix products and
never a D x D matrix. vMF uses ``d = 1/kappa`` (its tangent variance) as its
preconditioner.
"""

from __future__ import annotations

import io
import json
from typing import Callable, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import special

from .bank import FeatureBank
from .errors import InputError
from .sphere import project_to_sphere, sample_vmf, unit_rows

DENSITY_KINDS = ("vmf", "gaussian_isotropic", "gaussian_diagonal", "gaussian_full")
REPORTED_QUANTILES = (0.01, 0.05, 0.5, 0.95, 0.99)
_FORMAT = "oodsynth.densities/1"
_LOG_2PI = float(np.log(2 * np.pi))


class DensityParams(BaseModel):
    """Fit options; the kind-specific ones are ignored by other kinds."""

    model_config = ConfigDict(extra="forbid")

    n_quantiles: int = Field(101, ge=3, description="ID log-density quantiles stored per class (evenly spaced levels).")
    calibration_folds: int = Field(
        5, ge=0, description="Cross-fitting folds for the ID quantiles; 0 or 1 scores the training points in-sample."
    )
    newton_steps: int = Field(2, ge=0, description="vmf: Newton refinements of the Banerjee kappa estimate.")
    shrinkage: Literal["ledoit_wolf", "oas"] = Field("ledoit_wolf", description="gaussian_full: shrinkage estimator.")
    min_variance: float = Field(1e-10, gt=0, description="Gaussian kinds: variance floor added for stability.")
    seed: int = Field(0, description="Seed of the cross-fitting fold assignment.")


# ----------------------------------------------------------------------------- vMF maths


def log_bessel_iv(v, x) -> np.ndarray:
    """log I_v(x), stable in high dimension.

    ``scipy.special.ive`` (I_v(x) e^-x) covers large x; where it underflows
    (order ~383 at small x) the uniform asymptotic (Debye) expansion takes
    over, which is accurate to O(1/v) exactly there.
    """
    v, x = np.broadcast_arrays(np.asarray(v, dtype=np.float64), np.asarray(x, dtype=np.float64))
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        e = special.ive(v, x)
        out = np.log(e) + x
        bad = ~np.isfinite(out) | (e <= 0)
        if bad.any():
            vb, xb = v[bad], x[bad]
            z = xb / vb
            s = np.sqrt(1.0 + z * z)
            out = np.array(out, copy=True)
            out[bad] = -0.5 * np.log(2 * np.pi * vb) + vb * (s + np.log(z / (1.0 + s))) - 0.5 * np.log(s)
    return out


def vmf_log_normalizer(dim: int, kappa) -> np.ndarray:
    """log C_D(kappa) = (D/2-1) log kappa - (D/2) log 2pi - log I_{D/2-1}(kappa)."""
    kappa = np.asarray(kappa, dtype=np.float64)
    v = dim / 2.0 - 1.0
    return v * np.log(kappa) - (dim / 2.0) * _LOG_2PI - log_bessel_iv(v, kappa)


def vmf_mean_resultant(dim: int, kappa) -> np.ndarray:
    """A_D(kappa) = I_{D/2}(kappa) / I_{D/2-1}(kappa), the expected cosine to the mean direction."""
    return np.exp(log_bessel_iv(dim / 2.0, kappa) - log_bessel_iv(dim / 2.0 - 1.0, kappa))


def estimate_kappa(dim: int, r_bar: float, newton_steps: int = 2) -> float:
    """kappa from the mean resultant length: Banerjee et al. (2005), then Newton on A_D(kappa) = r_bar."""
    r_bar = float(np.clip(r_bar, 1e-12, 1.0 - 1e-12))
    kappa = r_bar * (dim - r_bar**2) / (1.0 - r_bar**2)
    for _ in range(newton_steps):
        a = float(vmf_mean_resultant(dim, kappa))
        slope = 1.0 - a * a - (dim - 1.0) / kappa * a
        if not np.isfinite(a) or slope >= 0:  # A is increasing and concave; a bad slope means no safe step
            break
        kappa = max(kappa - (a - r_bar) / slope, kappa / 10.0)
    return float(kappa)


# ----------------------------------------------------------------------------- the estimator


class ClassDensities:
    """One density per class on the unit sphere, fitted from a ``FeatureBank``.

    Fitted state: ``class_names_``, ``anchors_`` (C, D), ``means_`` (C, D unit
    mean directions), ``n_per_class_``, ``centers_`` (Gaussian centres; the mean
    direction for vMF), ``kappa_`` (vMF), ``diag_``/``basis_``/``eig_`` (the
    spectral covariance, see the module docstring), ``quantile_levels_`` and
    ``quantile_values_`` (C, Q) ID log-density quantiles.
    """

    def __init__(self, kind: str = "vmf", **params):
        if kind not in DENSITY_KINDS:
            raise InputError("density", f"unknown density kind {kind!r}; choose one of {', '.join(DENSITY_KINDS)}")
        self.kind = kind
        self.params = DensityParams(**params)
        self.dim: int | None = None
        self.n_classes: int | None = None

    # ------------------------------------------------------------------ fitting

    def fit(self, bank: FeatureBank, progress: Callable[[int, int], None] | None = None) -> "ClassDensities":
        X = unit_rows(np.asarray(bank.features, dtype=np.float64), field="features")
        labels = np.asarray(bank.labels)
        C, D = bank.n_classes, X.shape[1]
        counts = np.bincount(labels, minlength=C)
        if (counts < 2).any():
            c = int(np.flatnonzero(counts < 2)[0])
            raise InputError("labels", f"class {c} ({bank.class_names[c]}) has {counts[c]} points; a density needs >= 2")
        self.dim, self.n_classes = D, C
        self.class_names_ = [str(n) for n in bank.class_names]
        self.anchors_ = np.asarray(bank.anchors, dtype=np.float32)
        self.n_per_class_ = counts.astype(np.int64)
        levels = np.linspace(0.0, 1.0, self.params.n_quantiles)
        fits, quantiles = [], []
        rng = np.random.default_rng(self.params.seed)
        for c in range(C):
            Xc = X[labels == c]
            fits.append(self._fit_class(Xc))
            quantiles.append(self._calibration_quantiles(Xc, fits[-1], levels, rng))
            if progress is not None:
                progress(c + 1, C)
        self._stack(fits)
        self.quantile_levels_ = levels
        self.quantile_values_ = np.maximum.accumulate(np.asarray(quantiles), axis=1)  # guard float ties
        return self

    def _fit_class(self, Xc: np.ndarray) -> dict:
        n, D = Xc.shape
        p = self.params
        xbar = Xc.mean(axis=0)
        r_bar = float(np.linalg.norm(xbar))
        direction = xbar / r_bar if r_bar > 0 else Xc[0]
        if self.kind == "vmf":
            kappa = estimate_kappa(D, r_bar, p.newton_steps)
            return {"center": direction, "direction": direction, "kappa": kappa, "diag": np.full(D, 1.0 / kappa),
                    "basis": np.zeros((D, 0)), "eig": np.zeros(0)}
        centered = Xc - xbar
        if self.kind == "gaussian_isotropic":
            diag = np.full(D, (centered**2).mean() + p.min_variance)
            basis, eig = np.zeros((D, 0)), np.zeros(0)
        elif self.kind == "gaussian_diagonal":
            diag = (centered**2).mean(axis=0) + p.min_variance
            basis, eig = np.zeros((D, 0)), np.zeros(0)
        else:  # gaussian_full: (1-s) S + s mu I held as floor + thin eigenbasis of S
            from sklearn.covariance import ledoit_wolf_shrinkage, oas

            if p.shrinkage == "ledoit_wolf":
                s = float(ledoit_wolf_shrinkage(centered, assume_centered=True))
            else:
                s = float(oas(centered, assume_centered=True)[1])
            mu = float((centered**2).sum() / (n * D))
            floor = s * mu + p.min_variance
            _, sv, vt = np.linalg.svd(centered, full_matrices=False)
            keep = sv > sv.max(initial=0.0) * 1e-9
            basis = vt[keep].T
            eig = (1.0 - s) * sv[keep] ** 2 / n + floor
            diag = np.full(D, floor)
        return {"center": xbar, "direction": direction, "kappa": np.nan, "diag": diag, "basis": basis, "eig": eig}

    def _calibration_quantiles(self, Xc: np.ndarray, full_fit: dict, levels: np.ndarray,
                               rng: np.random.Generator) -> np.ndarray:
        """ID log-density quantiles on the scale of the model fitted on all ``n`` points.

        ``score_samples`` uses the model fitted on all ``n`` points, so the quantiles
        must describe how that model scores *fresh* ID points. In-sample scores run
        too high (the model flatters its own points) and cross-fitted held-out scores
        from models fitted on ``m < n`` points run too low (a shrunk full covariance
        on thin data gets markedly better with ``m``: 768-d, 500 points, fresh draws
        sat at percentile ~70 against 5-fold quantiles). So held-out scores are
        computed at two training sizes, ``m_far = n (K-1)/K`` (K folds) and
        ``m_near = n (4K-1)/4K`` (4K folds), and their location (median) and spread
        (10-90 % range) are extrapolated linearly in ``1/m`` to ``m = n``; the near
        quantiles are moved and rescaled accordingly. The extrapolation step is short
        (``n - m_near = n/4K``), so its functional form matters little, and shifting
        and scaling as a whole keeps the tails as stable as the held-out quantiles.
        """
        n = Xc.shape[0]
        far = min(self.params.calibration_folds, n // 2)
        if far < 2:
            return np.quantile(self._class_logpdf(full_fit, Xc), levels)
        near = min(4 * far, n // 2)
        q_far = np.quantile(self._held_out_logpdf(Xc, far, rng), levels)
        if near <= far:
            return q_far
        q_near = np.quantile(self._held_out_logpdf(Xc, near, rng), levels)
        m_far, m_near = n * (far - 1) / far, n * (near - 1) / near
        w = (1.0 / n - 1.0 / m_near) / (1.0 / m_near - 1.0 / m_far)  # > 0: extrapolate beyond m_near

        def location_spread(q):
            return np.interp(0.5, levels, q), np.interp(0.9, levels, q) - np.interp(0.1, levels, q)

        (c_near, s_near), (c_far, s_far) = location_spread(q_near), location_spread(q_far)
        if s_near <= 0:
            return q_near + w * (c_near - c_far)
        c = c_near + w * (c_near - c_far)
        s = max(s_near + w * (s_near - s_far), 0.5 * s_near)  # never collapse the spread on noisy folds
        return c + (q_near - c_near) * (s / s_near)

    def _held_out_logpdf(self, Xc: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
        """Log-densities of the class's own points, each scored by a model fitted without its fold."""
        n = Xc.shape[0]
        assignment = rng.permutation(n) % folds
        out = np.empty(n)
        for f in range(folds):
            held = assignment == f
            out[held] = self._class_logpdf(self._fit_class(Xc[~held]), Xc[held])
        return out

    def _class_logpdf(self, fit: dict, X: np.ndarray) -> np.ndarray:
        D = X.shape[1]
        if self.kind == "vmf":
            return vmf_log_normalizer(D, fit["kappa"]) + fit["kappa"] * (X @ fit["direction"])
        diff = X - fit["center"]
        floor = fit["diag"][0]
        maha = (diff**2 / fit["diag"]).sum(axis=1)
        logdet = np.log(fit["diag"]).sum()
        if fit["eig"].size:
            z = diff @ fit["basis"]
            maha += (z**2 * (1.0 / fit["eig"] - 1.0 / floor)).sum(axis=1)
            logdet += np.log(fit["eig"] / floor).sum()
        return -0.5 * (maha + logdet + D * _LOG_2PI)

    def _stack(self, fits: list[dict]) -> None:
        C, D = len(fits), self.dim
        self.means_ = np.stack([f["direction"] for f in fits]).astype(np.float64)
        self.centers_ = np.stack([f["center"] for f in fits]).astype(np.float64)
        self.kappa_ = np.array([f["kappa"] for f in fits], dtype=np.float64)
        self.diag_ = np.stack([f["diag"] for f in fits]).astype(np.float64)
        r = max(f["eig"].size for f in fits)
        self.basis_ = np.zeros((C, D, r), dtype=np.float32)
        self.eig_ = np.repeat(self.diag_[:, :1], r, axis=1)  # padding with the floor contributes nothing
        for c, f in enumerate(fits):
            k = f["eig"].size
            self.basis_[c, :, :k] = f["basis"]
            self.eig_[c, :k] = f["eig"]
        self._derive()

    def _derive(self) -> None:
        """Quantities recomputed from the stored arrays (after fit and after from_bytes)."""
        self._basis_t = np.ascontiguousarray(self.basis_.transpose(0, 2, 1))  # BLAS wants contiguous operands
        if self.kind == "vmf":
            self.lognorm_ = vmf_log_normalizer(self.dim, self.kappa_)
            self.logdet_ = np.zeros(self.n_classes)
        else:
            floor = self.diag_[:, :1]
            self.logdet_ = np.log(self.diag_).sum(axis=1) + np.log(self.eig_ / floor).sum(axis=1)
            self.lognorm_ = -0.5 * (self.logdet_ + self.dim * _LOG_2PI)

    # ------------------------------------------------------------------ validation

    def _check_fitted(self) -> None:
        if not hasattr(self, "quantile_values_"):
            raise RuntimeError("this ClassDensities is not fitted yet; call fit(bank) first")

    def _check_classes(self, classes, m: int | None = None) -> np.ndarray:
        classes = np.asarray(classes)
        if classes.ndim != 1 or (m is not None and classes.shape[0] != m):
            raise InputError("classes", f"expected shape ({m},), got {classes.shape}")
        if classes.size and not np.issubdtype(classes.dtype, np.integer):
            raise InputError("classes", f"expected integer class indices, got {classes.dtype}")
        if classes.size and (classes.min() < 0 or classes.max() >= self.n_classes):
            bad = int(classes[(classes < 0) | (classes >= self.n_classes)][0])
            raise InputError("classes", f"class index {bad} is out of range [0, {self.n_classes})")
        return classes.astype(np.int64)

    def _check_vectors(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise InputError("X", f"expected shape (M, {self.dim}), got {X.shape}")
        if not np.isfinite(X).all():
            raise InputError("X", "contains NaN or inf")
        return unit_rows(X, field="X")

    # ------------------------------------------------------------------ public scoring

    def score_samples(self, X, classes) -> np.ndarray:
        """Log-density of each row of ``X`` (projected to the sphere) under its class's density."""
        self._check_fitted()
        X = self._check_vectors(X)
        classes = self._check_classes(classes, X.shape[0])
        out = np.empty(X.shape[0])
        for c in np.unique(classes):
            rows = classes == c
            out[rows] = self.log_density_stack(X[rows][None], np.array([c]))[0]
        return out

    def percentile(self, logp, classes) -> np.ndarray:
        """ID percentile in [0, 100] of each log-density: the share of the class's ID points below it."""
        self._check_fitted()
        logp = np.asarray(logp, dtype=np.float64)
        classes = self._check_classes(classes, logp.shape[0] if logp.ndim == 1 else None)
        out = np.empty(logp.shape[0])
        for c in np.unique(classes):
            rows = classes == c
            out[rows] = np.interp(logp[rows], self.quantile_values_[c], 100.0 * self.quantile_levels_)
        return out

    def logpdf_at_percentile(self, pct: float, classes) -> np.ndarray:
        """Inverse of ``percentile``: the class log-density at ID percentile ``pct`` (per class)."""
        classes = np.asarray(classes, dtype=np.int64)
        return np.array([np.interp(pct / 100.0, self.quantile_levels_, self.quantile_values_[c]) for c in classes])

    def sample(self, n_per_class: int = 1, classes: Sequence[int] | None = None, seed: int | None = None,
               temperature: float = 1.0):
        """Draw unit vectors from each class density: ``(X (M, D), y (M,))`` like scikit-learn's mixtures."""
        self._check_fitted()
        classes = self._check_classes(np.arange(self.n_classes) if classes is None else classes)
        rng = np.random.default_rng(seed)
        X = self.sample_stack(classes, n_per_class, rng, temperature=temperature)
        return X.reshape(-1, self.dim), np.repeat(classes, n_per_class)

    # ------------------------------------------------------------------ batched maths for samplers
    # All take X (K, n, D) with one class per leading row, ``classes`` (K,), and keep X's dtype.

    def log_density_stack(self, X: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """(K, n) log-densities of unit vectors X (K, n, D)."""
        dt = X.dtype
        if self.kind == "vmf":
            dots = np.einsum("knd,kd->kn", X, self.means_[classes].astype(dt))
            return self.lognorm_[classes][:, None] + self.kappa_[classes][:, None] * dots
        diff = X - self.centers_[classes][:, None, :].astype(dt)
        maha = np.einsum("knd,kd->kn", diff * diff, (1.0 / self.diag_[classes]).astype(dt)).astype(np.float64)
        if self.basis_.shape[2]:
            z = np.matmul(diff, self.basis_[classes].astype(dt))
            w = (1.0 / self.eig_[classes] - 1.0 / self.diag_[classes, :1]).astype(dt)
            maha += np.einsum("knr,kr->kn", z * z, w)
        return self.lognorm_[classes][:, None] - 0.5 * maha

    def cov_power_stack(self, G: np.ndarray, classes: np.ndarray, power: float) -> np.ndarray:
        """Sigma_c^power applied to each row of G (K, n, D): whitening (-1/2), preconditioning (1), noise (1/2)."""
        dt = G.dtype
        out = G * (self.diag_[classes] ** power).astype(dt)[:, None, :]
        if self.basis_.shape[2]:
            V = self.basis_[classes].astype(dt, copy=False)
            coef = (self.eig_[classes] ** power - self.diag_[classes, :1] ** power).astype(dt)
            out += np.matmul(np.matmul(G, V) * coef[:, None, :], self._basis_t[classes].astype(dt, copy=False))
        return out

    def grad_log_density_stack(self, X: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Ambient gradient of the log-density at X (K, n, D)."""
        if self.kind == "vmf":
            g = (self.kappa_[classes][:, None] * self.means_[classes]).astype(X.dtype)
            return np.broadcast_to(g[:, None, :], X.shape).copy()
        diff = X - self.centers_[classes][:, None, :].astype(X.dtype)
        return -self.cov_power_stack(diff, classes, -1.0)

    def preconditioned_grad_stack(self, X: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Sigma_c grad log p at X (K, n, D): the drift of a covariance-preconditioned Langevin step."""
        if self.kind == "vmf":  # (1/kappa) * kappa * mu
            return np.broadcast_to(self.means_[classes].astype(X.dtype)[:, None, :], X.shape).copy()
        return self.centers_[classes][:, None, :].astype(X.dtype) - X

    def whitened_grad_stack(self, X: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Sigma_c^1/2 grad log p at X (K, n, D): the gradient in whitened coordinates."""
        if self.kind == "vmf":  # kappa^-1/2 * kappa * mu
            g = (np.sqrt(self.kappa_[classes])[:, None] * self.means_[classes]).astype(X.dtype)
            return np.broadcast_to(g[:, None, :], X.shape).copy()
        return -self.cov_power_stack(X - self.centers_[classes][:, None, :].astype(X.dtype), classes, -0.5)

    def sample_stack(self, classes: np.ndarray, n: int, rng: np.random.Generator, *, temperature: float = 1.0,
                     dtype=np.float64) -> np.ndarray:
        """(K, n, D) unit draws from the class densities, broadened (temperature > 1) or sharpened (< 1)."""
        if temperature <= 0:
            raise InputError("temperature", f"must be > 0, got {temperature}")
        classes = np.asarray(classes, dtype=np.int64)
        if self.kind == "vmf":
            return sample_vmf(self.means_[classes], self.kappa_[classes] / temperature, n, rng, dtype=dtype)
        g = rng.standard_normal((classes.size, n, self.dim), dtype=np.float64).astype(dtype, copy=False)
        X = self.centers_[classes][:, None, :].astype(dtype) + np.sqrt(temperature) * self.cov_power_stack(g, classes, 0.5)
        return project_to_sphere(X)

    # ------------------------------------------------------------------ reporting and persistence

    def class_variance(self) -> np.ndarray:
        """Mean per-dimension variance trace(Sigma)/D of each class (1/kappa for vMF's tangent spread)."""
        extra = ((self.eig_ - self.diag_[:, :1]) * (self.eig_ > 0)).sum(axis=1)
        return (self.diag_.sum(axis=1) + extra) / self.dim

    def summary(self) -> dict:
        """JSON-ready description: per class kappa or variance and ID log-density quantiles."""
        self._check_fitted()
        variance = self.class_variance()
        classes = []
        for c in range(self.n_classes):
            entry = {"index": c, "name": self.class_names_[c], "n": int(self.n_per_class_[c])}
            if self.kind == "vmf":
                entry["kappa"] = float(self.kappa_[c])
            else:
                entry["variance"] = float(variance[c])
            entry["logpdf_quantiles"] = {
                str(q): float(np.interp(q, self.quantile_levels_, self.quantile_values_[c])) for q in REPORTED_QUANTILES
            }
            classes.append(entry)
        return {"kind": self.kind, "dim": int(self.dim), "n_classes": int(self.n_classes), "classes": classes}

    _ARRAYS = ("anchors_", "means_", "centers_", "kappa_", "diag_", "basis_", "eig_", "n_per_class_",
               "quantile_levels_", "quantile_values_")

    def to_bytes(self) -> bytes:
        """``np.savez`` bytes (no pickle), safe to keep in Redis and to load from untrusted stores."""
        self._check_fitted()
        buf = io.BytesIO()
        arrays = {name: getattr(self, name) for name in self._ARRAYS}
        np.savez(buf, format=np.array(_FORMAT), kind=np.array(self.kind), params=np.array(self.params.model_dump_json()),
                 class_names_=np.array(self.class_names_, dtype=str), **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "ClassDensities":
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                if "format" not in z.files or str(z["format"]) != _FORMAT:
                    raise InputError("fit", "not a serialised ClassDensities (format tag missing or different)")
                fit = cls(str(z["kind"]), **json.loads(str(z["params"])))
                fit.class_names_ = [str(n) for n in z["class_names_"]]
                for name in cls._ARRAYS:
                    setattr(fit, name, z[name])
        except (OSError, EOFError, KeyError) as exc:
            raise InputError("fit", f"unreadable serialised ClassDensities ({exc})") from exc
        fit.n_classes, fit.dim = fit.means_.shape
        fit._derive()
        return fit

    def __repr__(self) -> str:
        state = f"{self.n_classes} classes, dim {self.dim}" if self.dim else "unfitted"
        return f"ClassDensities(kind={self.kind!r}, {state})"
