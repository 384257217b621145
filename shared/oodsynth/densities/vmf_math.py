"""von Mises-Fisher maths in high dimension: log Bessel functions, the normaliser, kappa estimation."""

from __future__ import annotations

import numpy as np
from scipy import special

LOG_2PI = float(np.log(2 * np.pi))


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
    return v * np.log(kappa) - (dim / 2.0) * LOG_2PI - log_bessel_iv(v, kappa)


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
