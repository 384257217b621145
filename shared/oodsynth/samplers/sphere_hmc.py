"""Spherical Hamiltonian Monte Carlo between classes (after HamOS, 2025), written from the method.

Target, per vector (source class c, partner j among its ``n_neighbors``
nearest classes by mean direction):

    log pi(z) = kappa * b.z - (a.z)^2 / (2 w^2),   a = T^_c - T^_j,   b = (mu_c + mu_j)/|mu_c + mu_j|

``a.z`` is the anchor classifier's c-vs-j margin (cosine units), so the
second factor is a ridge on the decision boundary of width ``w``
(``boundary_width``): high between the two classes, vanishing inside either,
where the margin is large. The first is a von Mises-Fisher support term
around the midpoint of the two class means, with the classes' own
concentration (``kappa = support_scale / class variance``), so that the
samples stay where data of either class could be, not anywhere on the
boundary's great sphere. Why this and not the inverted class density: an
inverted density grows without bound away from the class and needs a hard
floor or truncation (which Hamiltonian dynamics cross badly), and it says
nothing about *which* way is between classes; this target is smooth, proper
on the sphere, uses the same anchor classifier as ``boundary_crossing``, and
its limits are known (w -> infinity gives a vMF), which the tests use.

Sampler: HMC on the unit sphere (Byrne & Girolami 2013): momentum drawn in
the tangent space, geodesic leapfrog (half gradient kick in the tangent
space, exact great-circle flow, half kick), Metropolis correction on
H = -log pi + |v|^2/2. The step size adapts per chain during the first half
of the iterations (towards ``target_accept``) and is then fixed, so the
second half is an exact Metropolis-corrected chain.

Cost: the target depends on z only through its coordinates u = E^T z on the
2-d span E = {b, a} of each pair. The leapfrog never leaves
span{E, z_perp, v_perp} (z_perp, v_perp: the parts of position and momentum
outside E), so each iteration runs exactly in those k+2 = 4 coordinates,
with the momentum's 4 coordinates drawn as N(0,1) along E and z_perp and
chi(D-k-1) for the rest. The process of (u, |z_perp|) is then exactly the
projection of the full D-dimensional chain; the direction of z_perp, on which
the target does not depend, is drawn at the end from its exact conditional
(uniform in E's orthogonal complement). ``full_dimensional_step`` is the
literal D-dimensional iteration; a test checks that both give the same u.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..densities import ClassDensities
from ..errors import InputError
from .anchor_classifier import unit_anchors
from .base import Sampler, check_deadline
from .class_interpolation import nearest_classes
from .geodesic import geodesic_flow, rownorm, to_tangent

LogProbGrad = Callable[
    [np.ndarray], tuple[np.ndarray, np.ndarray]
]  # u (..., k) -> (log pi (...), d log pi / du (..., k))


class SphereHMCParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_neighbors: int = Field(
        3, ge=1, le=1_000, description="Partner classes: this many nearest classes (by mean direction)."
    )
    boundary_width: float = Field(
        0.05, ge=1e-4, le=2, description="Width w of the boundary ridge, in cosine-margin units (1/w^2 stays finite)."
    )
    support_scale: float = Field(
        1.0, ge=1e-6, le=100, description="Concentration of the support term relative to the classes' own."
    )
    n_iter: int = Field(
        40, ge=2, le=10_000, description="HMC iterations per chain (the first half adapts the step size)."
    )
    n_leapfrog: int = Field(6, ge=1, le=1_000, description="Leapfrog steps per iteration.")
    step_size: float = Field(
        0.5, ge=1e-6, le=10, description="Initial leapfrog step in units of the target's smallest length scale."
    )
    target_accept: float = Field(0.75, gt=0, lt=1, description="Acceptance rate the step size adapts to.")


def _tangent_grad(q: np.ndarray, grad_u: np.ndarray) -> np.ndarray:
    g = np.zeros_like(q)
    g[..., : grad_u.shape[-1]] = grad_u
    return to_tangent(q, g)


def leapfrog(
    q: np.ndarray,
    p: np.ndarray,
    log_prob_grad: LogProbGrad,
    k: int,
    eps: np.ndarray,
    n_leapfrog: int,
    grad_u: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``n_leapfrog`` geodesic leapfrog steps in the reduced coordinates q = (u, z_perp coords): (q, p, log pi, grad)."""
    if grad_u is None:
        grad_u = log_prob_grad(q[..., :k])[1]
    g = _tangent_grad(q, grad_u)
    for _ in range(n_leapfrog):
        p = p + 0.5 * eps * g
        q, p = geodesic_flow(q, p, eps)
        q = q / rownorm(q)  # float round-off only
        p = to_tangent(q, p)
        logp, grad_u = log_prob_grad(q[..., :k])
        g = _tangent_grad(q, grad_u)
        p = p + 0.5 * eps * g
    return q, p, logp, grad_u


def subspace_hmc(
    u: np.ndarray,
    log_prob_grad: LogProbGrad,
    dim: int,
    step: np.ndarray,
    n_iter: int,
    n_leapfrog: int,
    rng: np.random.Generator,
    *,
    adapt_iters: int = 0,
    target_accept: float = 0.75,
    accept_all: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Geodesic HMC on S^(dim-1) for a target that depends on z only through u = E^T z (see the module doc).

    ``u`` (..., k) are the chains' start coordinates (|u| <= 1). Returns the
    final coordinates, the per-chain step sizes and the acceptance rate of each
    chain over the non-adapting iterations. ``accept_all`` drops the Metropolis
    test (for tests that show it matters).
    """
    u = np.array(u, dtype=np.float64)
    k = u.shape[-1]
    shape = u.shape[:-1]
    log_step = np.log(np.broadcast_to(np.asarray(step, dtype=np.float64), shape)).copy()
    rho = np.sqrt(np.clip(1.0 - (u * u).sum(-1), 0.0, None))
    logp, grad = log_prob_grad(u)
    accepted = np.zeros(shape)
    for it in range(n_iter):
        check_deadline()  # the request's time budget (base.check_deadline)
        q = np.concatenate([u, rho[..., None], np.zeros(shape + (1,))], axis=-1)
        # momentum: N(0,1) along E and z_perp, chi(dim-k-1) for the norm of the rest, then made tangent
        rest = np.sqrt(rng.chisquare(dim - k - 1, size=shape)) if dim - k - 1 > 0 else np.zeros(shape)
        p = to_tangent(q, np.concatenate([rng.standard_normal(shape + (k + 1,)), rest[..., None]], axis=-1))
        h0 = -logp + 0.5 * (p * p).sum(-1)
        q, p, logp_new, grad_new = leapfrog(q, p, log_prob_grad, k, np.exp(log_step)[..., None], n_leapfrog, grad)
        h1 = -logp_new + 0.5 * (p * p).sum(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            log_alpha = np.where(np.isfinite(h1), h0 - h1, -np.inf)
        accept = np.ones(shape, dtype=bool) if accept_all else np.log(rng.uniform(size=shape)) < log_alpha
        u = np.where(accept[..., None], q[..., :k], u)
        rho = np.where(accept, np.linalg.norm(q[..., k:], axis=-1), rho)
        logp = np.where(accept, logp_new, logp)
        grad = np.where(accept[..., None], grad_new, grad)
        if it < adapt_iters:
            rate = np.exp(np.minimum(log_alpha, 0.0))
            log_step += (np.nan_to_num(rate) - target_accept) / np.sqrt(it + 1.0)
        else:
            accepted += accept
    return u, np.exp(log_step), accepted / max(1, n_iter - adapt_iters)


def full_dimensional_step(
    z: np.ndarray, xi: np.ndarray, grad_fn: Callable[[np.ndarray], np.ndarray], eps: float, n_leapfrog: int
) -> np.ndarray:
    """The literal D-dimensional geodesic leapfrog from ``z`` with raw momentum ``xi`` (no Metropolis test), for tests."""
    v = to_tangent(z, xi)
    for _ in range(n_leapfrog):
        v = v + 0.5 * eps * to_tangent(z, grad_fn(z))
        z, v = geodesic_flow(z, v, eps)
        v = v + 0.5 * eps * to_tangent(z, grad_fn(z))
    return z


def uniform_in_complement(E: np.ndarray, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """Unit vectors (..., D) uniform on the sphere of the orthogonal complement of orthonormal rows E (..., k, D)."""
    w = rng.standard_normal(E.shape[:-2] + E.shape[-1:], dtype=dtype)
    w -= np.einsum("...k,...kd->...d", np.einsum("...kd,...d->...k", E, w), E)
    return w / np.linalg.norm(w, axis=-1, keepdims=True)


class SphereHMCSampler(Sampler):
    name = "sphere_hmc"
    needs_bank = False
    reports_margin = True
    Params = SphereHMCParams

    def _sample_block(self, fit: ClassDensities, classes, n, rng, bank=None) -> np.ndarray:
        p = self.params
        n_classes, dim = fit._check_fitted()
        if n_classes < 2:
            raise InputError("method", "sphere_hmc needs at least two classes")
        A = unit_anchors(fit.anchors_, np.float64)
        means = np.asarray(fit.means_, dtype=np.float64)
        kappa_class = 1.0 / np.asarray(fit.class_variance(), dtype=np.float64)
        neighbours = nearest_classes(means, min(p.n_neighbors, n_classes - 1))
        K, m = len(classes), neighbours.shape[1]
        src = np.repeat(np.asarray(classes), m)
        partner = neighbours[np.asarray(classes)].ravel()
        # per (source, partner) pair: orthonormal E = {e1 = b, e2 = a's part orthogonal to b}, a's coordinates
        b = means[src] + means[partner]
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        a = A[src] - A[partner]
        a1 = (a * b).sum(1)
        e2 = a - a1[:, None] * b
        a2 = np.linalg.norm(e2, axis=1)
        e2 /= np.where(a2 > 0, a2, 1.0)[:, None]
        E = np.stack([b, e2], axis=1)  # (K*m, 2, D)
        kappa = p.support_scale * np.minimum(kappa_class[src], kappa_class[partner])
        # each chain picks one pair of its class
        pair = (np.arange(K)[:, None] * m + rng.integers(m, size=(K, n))).ravel()
        alpha = np.stack([a1, a2], axis=1)[pair]  # (K*n, 2)
        kap, inv_w2 = kappa[pair], 1.0 / p.boundary_width**2

        def log_prob_grad(u):
            margin = (alpha * u).sum(-1)
            logp = kap * u[..., 0] - 0.5 * inv_w2 * margin**2
            grad = -inv_w2 * margin[..., None] * alpha
            grad[..., 0] += kap
            return logp, grad

        # start on the midpoint direction b (u = (1, 0)): the support term's mode, on the boundary when the
        # anchors' margin vanishes there; the adapting half of the run is the burn-in
        u0 = np.tile([1.0, 0.0], (K * n, 1))
        scale = 1.0 / np.sqrt(kap + inv_w2 * (alpha**2).sum(1))
        u, _, _ = subspace_hmc(
            u0,
            log_prob_grad,
            dim,
            p.step_size * scale,
            p.n_iter,
            p.n_leapfrog,
            rng,
            adapt_iters=p.n_iter // 2,
            target_accept=p.target_accept,
        )
        rho = np.sqrt(np.clip(1.0 - (u * u).sum(-1), 0.0, None))
        Ec = E[pair].astype(np.float32)
        z = np.einsum("nk,nkd->nd", u.astype(np.float32), Ec) + rho.astype(np.float32)[:, None] * uniform_in_complement(
            Ec, rng
        )
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        return z.reshape(K, n, fit.dim)
