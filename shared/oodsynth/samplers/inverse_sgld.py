"""Inverse Langevin dynamics, preconditioned, with adaptive steps and a stopping band.

The seed's proposal ``x <- x - (eta/2) grad log p(x) + sqrt(eta) eps`` walks
*down* the class density. With class covariances of 1e-2..1e-5 a single
fixed ``eta`` is a random walk at one scale and unstable at another, so here:

- the step is taken in whitened coordinates (preconditioned by the fitted
  covariance ``Sigma``): ``x <- x - (eta/2) Sigma grad log p + sqrt(eta) Sigma^1/2 eps``,
  then projected back onto the sphere, so one ``eta`` means the same thing
  for every class scale;
- each chain has its own ``eta``: it grows while a step leaves the chain in
  high density (above the band) and halves when a step would jump past the
  band (that step is rejected), so steps are large far from the band and
  small near it;
- each chain stops (freezes) once its ID percentile is inside ``band``; a
  chain that starts below the band climbs back by noise-free ascent steps.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..densities import ClassDensities
from ..sphere import project_to_sphere
from .base import Sampler, check_deadline, validate_band


class InverseSGLDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    band: tuple[float, float] = Field((0.5, 5.0), description="Target ID percentiles (low, high) where chains stop.")
    step_size: float = Field(0.05, ge=1e-6, le=100, description="Initial eta, in whitened units.")
    max_step_size: float = Field(1.0, ge=1e-6, le=100, description="Largest eta a chain may grow to.")
    grow: float = Field(1.25, gt=1, le=100, description="eta factor after a step that stays above the band.")
    shrink: float = Field(0.5, ge=1e-3, lt=1, description="eta factor after a step that would overshoot the band.")
    max_steps: int = Field(
        500, ge=1, le=100_000, description="Chains still outside the band after this many steps are kept as they are."
    )
    start_temperature: float = Field(
        1.0, ge=1e-3, le=1e3, description="Chains start from the class density at this temperature."
    )

    @field_validator("band")
    @classmethod
    def _band(cls, v):
        return validate_band(v)


class InverseSGLDSampler(Sampler):
    name = "inverse_sgld"
    needs_bank = False
    blas_threads = 1
    Params = InverseSGLDParams

    def _sample_block(self, fit: ClassDensities, classes, n, rng, bank=None) -> np.ndarray:
        p = self.params
        dt = np.float32
        X = fit.sample_stack(classes, n, rng, temperature=p.start_temperature, dtype=dt)
        top = fit.logpdf_at_percentile(p.band[1], classes)[:, None]  # log-density at the band's high percentile
        bottom = fit.logpdf_at_percentile(p.band[0], classes)[:, None]
        logp = fit.log_density_stack(X, classes)
        eta = np.full(logp.shape, p.step_size)
        done = (logp >= bottom) & (logp <= top)
        for _ in range(p.max_steps):
            check_deadline()  # the request's time budget (base.check_deadline)
            active = ~done
            if not active.any():
                break
            above = (logp > top)[..., None]
            drift = fit.preconditioned_grad_stack(X, classes)  # Sigma grad log p
            noise = fit.cov_power_stack(rng.standard_normal(X.shape, dtype=dt), classes, 0.5)
            e = eta.astype(dt)[..., None]
            step = np.where(above, -0.5 * e * drift + np.sqrt(e) * noise, 0.5 * e * drift)
            proposal = project_to_sphere(X + step)
            new_logp = fit.log_density_stack(proposal, classes)
            inside = (new_logp >= bottom) & (new_logp <= top)
            overshoot = np.where(above[..., 0], new_logp < bottom, new_logp > top)
            accept = active & ~overshoot
            X[accept] = proposal[accept]
            logp[accept] = new_logp[accept]
            eta = np.where(active & overshoot, eta * p.shrink, eta)
            eta = np.where(accept & ~inside, np.minimum(eta * p.grow, p.max_step_size), eta)
            done |= accept & inside
        return X


def fixed_step_inverse_sgld(
    fit: ClassDensities, classes, n: int, eta: float, n_steps: int, rng: np.random.Generator
) -> np.ndarray:
    """Plain inverse SGLD, a baseline used only by tests: fixed eta, no preconditioning, no stopping rule.

    ``x <- x - (eta/2) grad log p(x) + sqrt(eta) eps``, projected to the sphere;
    returns unit vectors (K, n, D). ``tests/test_samplers.py`` uses it to show why
    the preconditioned, adaptive version exists.
    """
    classes = np.asarray(classes, dtype=np.int64)
    X = fit.sample_stack(classes, n, rng)
    for _ in range(n_steps):
        grad = fit.grad_log_density_stack(X, classes)
        X = project_to_sphere(X - 0.5 * eta * grad + np.sqrt(eta) * rng.standard_normal(X.shape))
    return X
