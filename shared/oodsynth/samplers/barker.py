"""Barker's proposal (Livingstone & Zanella 2022) on the inverted class density, exact on the sphere.

Target on the sphere: ``log pi(x) = -log p(x) / temperature`` restricted to
``log p(x) >= `` the ID log-density at ``floor_percentile`` (the sphere is
compact, so this is a proper distribution). Its mass piles up just above the
floor: vectors at the low-density edge of the class, never beyond it.

Barker's proposal moves each (whitened) coordinate by ``+-|z|`` with the sign
chosen with probability ``sigmoid(z * gradient)``: the gradient only tilts
the direction, so a badly scaled step degrades gracefully instead of
exploding like a Langevin step.

Exactness. The seed's chain took a flat-space Barker step, projected it back
onto the sphere and used the flat-space ratio on the projected move: the
projection is not part of the proposal the ratio describes, so the chain was
biased (a test shows it on S^2). Here the chain never projects: it runs in
R^D on a lifted density whose direction is distributed exactly as pi,

    p(y) = pi(y/|y|) * rho(|y|) * |y|^-(D-1),

because dy = r^(D-1) dr dS in polar coordinates: the direction's law is pi
(for any radial factor that does not depend on the direction), and the factor
|y|^-(D-1), the Jacobian of the projection y -> y/|y|, makes the law of |y|
exactly rho, a Gaussian around 1 of the class's own tangent scale, so that
|y| stays where the preconditioner fits. Barker's test is exact on a flat
space, so the chain is exact for p, and y/|y| for pi. It moves in whitened
coordinates s, y = Sigma^1/2 s (the fitted covariance; a constant linear map,
whose Jacobian cancels in the test), so one step size means the same at
every class scale. The returned vectors are y/|y|. The step size
adapts per chain towards ``target_accept`` during the first half of the run
and is then fixed, so the second half is an exact Metropolis-Hastings chain.

Speed: the per-coordinate work (Gaussian and uniform draws, the sigmoid
flip, the two softplus sums of the proposal ratio) stays in float32 numpy
with in-place operations (torch was measured slower here: its thread pool
stalls on a busy 2-core box); everything else is the fit's batched maths.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import expit

from ..densities import ClassDensities
from .base import Sampler, check_deadline
from .geodesic import rowdot


class BarkerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    floor_percentile: float = Field(0.5, ge=0, lt=100, description="No mass below this ID percentile.")
    temperature: float = Field(1.0, ge=1e-3, le=1e3, description="Tempering of the inverted target.")
    step_size: float = Field(0.1, ge=1e-6, le=100, description="Initial proposal scale in whitened coordinates.")
    target_accept: float = Field(0.4, gt=0, lt=1, description="Acceptance rate the step size adapts to.")
    n_steps: int = Field(
        150, ge=1, le=10_000, description="MCMC steps per chain (the first half adapts the step size)."
    )
    start_temperature: float = Field(
        0.5, ge=1e-3, le=1e3, description="Chains start from the class density at this temperature."
    )


class SphereTarget:
    """What the lifted Barker chain needs to know about a target on the sphere and its preconditioner.

    ``sqrt_cov(V)``: Sigma^1/2 V; ``inv_sqrt_cov(V)``: Sigma^-1/2 V; ``log_target(x)``: log pi at unit x
    (-inf outside the support); ``whitened_grad(x)``: Sigma^1/2 times the ambient gradient of log pi at x;
    ``radial_scale``: the standard deviation of rho around |y| = 1. Arrays are (..., D).
    """

    def __init__(
        self,
        sqrt_cov: Callable,
        inv_sqrt_cov: Callable,
        log_target: Callable,
        whitened_grad: Callable,
        radial_scale: np.ndarray | float,
    ):
        self.sqrt_cov, self.inv_sqrt_cov = sqrt_cov, inv_sqrt_cov
        self.log_target, self.whitened_grad = log_target, whitened_grad
        self.radial_scale = radial_scale

    def lifted(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """At whitened point s: (unit x, log p(y) of the lifted density, its whitened gradient Sigma^1/2 grad_y)."""
        y = self.sqrt_cov(s)
        r = np.linalg.norm(y, axis=-1, keepdims=True)
        x = y / r
        D = y.shape[-1]
        sig = np.asarray(self.radial_scale, dtype=y.dtype)  # broadcasts against r (..., 1)
        log_p = self.log_target(x) - 0.5 * (((r - 1.0) / sig) ** 2)[..., 0] - (D - 1) * np.log(r[..., 0])
        wg = self.whitened_grad(x)  # Sigma^1/2 h, h = ambient grad of log pi at x
        x_dot_h = rowdot(s / r, wg)  # x.h = (Sigma^-1/2 x).(Sigma^1/2 h), and Sigma^-1/2 x = s / r
        radial = -(r - 1.0) / sig**2 - (D - 1) / r  # d/dr [log rho(r) - (D-1) log r]
        sx = self.sqrt_cov(x)
        # Sigma^1/2 grad_y = Sigma^1/2 [(h - (x.h) x) / r + radial * x]
        grad = (wg - x_dot_h * sx) / r + radial * sx
        return x, log_p, grad


def softplus(v: np.ndarray) -> np.ndarray:
    """log(1 + e^v) in v's dtype, stable: max(v, 0) + log1p(e^-|v|) (np.logaddexp is several times slower)."""
    out = np.abs(v)
    np.negative(out, out=out)
    np.exp(out, out=out)
    np.log1p(out, out=out)
    out += np.maximum(v, 0)
    return out


def barker_chain(
    target: SphereTarget,
    x0: np.ndarray,
    n_steps: int,
    step_size: float,
    rng: np.random.Generator,
    *,
    adapt_steps: int | None = None,
    target_accept: float = 0.4,
) -> tuple[np.ndarray, np.ndarray]:
    """Run Barker chains from unit starts ``x0`` (..., D) on ``target``: (final unit vectors, acceptance rate per chain
    over the non-adapting steps)."""
    adapt_steps = n_steps // 2 if adapt_steps is None else adapt_steps
    s = target.inv_sqrt_cov(x0)  # y = x0, |y| = 1
    dt = s.dtype
    x, log_p, grad = target.lifted(s)
    shape = log_p.shape
    log_scale = np.full(shape, np.log(step_size))
    accepted = np.zeros(shape)
    for t in range(n_steps):
        check_deadline()  # the request's time budget (base.check_deadline)
        move = rng.standard_normal(s.shape, dtype=dt)
        move *= np.exp(log_scale).astype(dt)[..., None]
        # Barker: keep the sign of z with probability sigmoid(z * grad), else flip it
        flip = rng.random(s.shape, dtype=dt) >= expit(move * grad)
        np.negative(move, out=move, where=flip)
        s_new = s + move
        x_new, log_p_new, grad_new = target.lifted(s_new)
        # log Q(s_new -> s) - log Q(s -> s_new) = sum softplus(-m g) - softplus(m g'), softplus(-a) = softplus(a) - a
        a, b = move * grad, move * grad_new
        log_q = (softplus(a) - a - softplus(b)).sum(-1).astype(np.float64)
        with np.errstate(invalid="ignore"):
            log_alpha = np.where(np.isfinite(log_p_new), log_p_new - log_p + log_q, -np.inf)
        accept = np.log(rng.uniform(size=shape)) < log_alpha
        s[accept], x[accept], grad[accept] = s_new[accept], x_new[accept], grad_new[accept]
        log_p = np.where(accept, log_p_new, log_p)
        if t < adapt_steps:
            log_scale += (np.exp(np.minimum(log_alpha, 0.0)) - target_accept) / np.sqrt(t + 1.0)
        else:
            accepted += accept
    return x, accepted / max(1, n_steps - adapt_steps)


def inverted_class_target(
    fit: ClassDensities, classes: np.ndarray, floor_percentile: float, temperature: float
) -> SphereTarget:
    """The inverted class densities above their floors, preconditioned by the fitted covariances."""
    floor = fit.logpdf_at_percentile(floor_percentile, classes)[:, None]

    def log_target(x):
        logp = fit.log_density_stack(x, classes)
        return np.where(logp >= floor, -logp / temperature, -np.inf)

    radial = np.sqrt(np.asarray(fit.class_variance(), dtype=np.float64)[classes])[:, None, None]
    return SphereTarget(
        sqrt_cov=lambda v: fit.cov_power_stack(v, classes, 0.5),
        inv_sqrt_cov=lambda v: fit.cov_power_stack(v, classes, -0.5),
        log_target=log_target,
        whitened_grad=lambda x: -fit.whitened_grad_stack(x, classes) / temperature,
        radial_scale=radial,
    )


class BarkerSampler(Sampler):
    name = "barker"
    needs_bank = False
    blas_threads = 1
    Params = BarkerParams

    def _sample_block(self, fit: ClassDensities, classes, n, rng, bank=None) -> np.ndarray:
        p = self.params
        dt = np.float32
        target = inverted_class_target(fit, classes, p.floor_percentile, p.temperature)
        X = fit.sample_stack(classes, n, rng, temperature=p.start_temperature, dtype=dt)
        # a start below the floor is outside the target's support: move it to the class's mean direction
        low = ~np.isfinite(target.log_target(X))
        if low.any():
            mode = np.asarray(fit.means_, dtype=dt)[classes]
            X[low] = np.broadcast_to(mode[:, None, :], X.shape)[low]
        X, _ = barker_chain(target, X, p.n_steps, p.step_size, rng, target_accept=p.target_accept)
        return X
