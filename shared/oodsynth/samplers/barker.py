"""Barker's proposal (Livingstone & Zanella 2022) on the inverted class density.

Target: ``log pi(x) = -log p(x) / temperature`` restricted to
``log p(x) >= `` the ID log-density at ``floor_percentile`` (the sphere is
compact, so this is a proper distribution). Its mass piles up just above the
floor: vectors at the low-density edge of the class, never beyond it.

Barker's proposal moves each (whitened) coordinate by ``+-|z|`` with the sign
chosen with probability ``sigmoid(z * gradient)``: the gradient only tilts
the direction, so a badly scaled step degrades gracefully instead of
exploding like a Langevin step. Steps are taken in whitened coordinates
(preconditioned by the fitted covariance, as in inverse SGLD), projected back
onto the sphere, with a Metropolis-Hastings test whose ratio is Barker's
flat-space ratio evaluated on the projected move. That ratio ignores the
projection's Jacobian and uses ambient (not tangent-plane) gradients, so the
chain is an approximate, not exact, sampler of the inverted target; the floor
is enforced exactly. An exact tangent-space version is future work. The step
size adapts per chain towards ``target_accept`` during the first half of the run.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import expit

from ..densities import ClassDensities
from ..sphere import project_to_sphere
from .base import Sampler


class BarkerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    floor_percentile: float = Field(0.5, ge=0, lt=100, description="No mass below this ID percentile.")
    temperature: float = Field(1.0, gt=0, description="Tempering of the inverted target.")
    step_size: float = Field(0.1, gt=0, description="Initial proposal scale in whitened coordinates.")
    target_accept: float = Field(0.4, gt=0, lt=1, description="Acceptance rate the step size adapts to.")
    n_steps: int = Field(150, ge=1, le=10_000, description="MCMC steps per chain.")
    start_temperature: float = Field(0.5, gt=0, description="Chains start from the class density at this temperature.")


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


class BarkerSampler(Sampler):
    name = "barker"
    needs_bank = False
    blas_threads = 1
    Params = BarkerParams

    def _sample_block(self, fit: ClassDensities, classes, n, rng, bank=None) -> np.ndarray:
        p = self.params
        dt = np.float32
        floor = fit.logpdf_at_percentile(p.floor_percentile, classes)[:, None]

        def log_target(logp):
            return np.where(logp >= floor, -logp / p.temperature, -np.inf)

        def whitened_grad(X):  # Sigma^1/2 grad log pi = -Sigma^1/2 grad log p / T
            return -fit.whitened_grad_stack(X, classes) / p.temperature

        X = fit.sample_stack(classes, n, rng, temperature=p.start_temperature, dtype=dt)
        logp = fit.log_density_stack(X, classes)
        # a start below the floor is outside the target's support: pull it to the mode direction
        low = logp < floor
        if low.any():
            mode = project_to_sphere(fit.centers_[classes]).astype(dt)
            X[low] = np.broadcast_to(mode[:, None, :], X.shape)[low]
            logp = fit.log_density_stack(X, classes)
        grad = whitened_grad(X)
        log_scale = np.full(logp.shape, np.log(p.step_size))
        adapt_until = p.n_steps // 2
        for t in range(p.n_steps):
            z = rng.standard_normal(X.shape, dtype=dt) * np.exp(log_scale).astype(dt)[..., None]
            flip = rng.uniform(size=X.shape).astype(dt) >= expit(z * grad)
            move = np.where(flip, -z, z)
            Y = project_to_sphere(X + fit.cov_power_stack(move, classes, 0.5))
            logp_y = fit.log_density_stack(Y, classes)
            grad_y = whitened_grad(Y)
            d = fit.cov_power_stack(Y - X, classes, -0.5)  # the projected move in whitened coordinates
            log_q = (_softplus(-d * grad) - _softplus(d * grad_y)).sum(axis=-1, dtype=np.float64)
            with np.errstate(invalid="ignore"):
                log_alpha = log_target(logp_y) - log_target(logp) + log_q
            accept = np.log(rng.uniform(size=logp.shape)) < log_alpha
            X[accept], logp[accept], grad[accept] = Y[accept], logp_y[accept], grad_y[accept]
            if t < adapt_until:
                rate = np.minimum(1.0, np.exp(np.minimum(log_alpha, 0.0)))
                log_scale += (rate - p.target_accept) / np.sqrt(t + 1.0)
        return X
