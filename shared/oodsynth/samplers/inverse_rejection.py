"""Rejection sampling of the inverted density: accept with probability eps / (eps + p(x)).

Proposals come from a broadened version of the class density (temperature
> 1: vMF with kappa / T, Gaussian with covariance T * Sigma). ``eps`` is the
class's ID density at ``eps_percentile``, so a proposal as likely as a typical
ID point is almost always rejected and one in the tail almost always kept.
All in log space: ``log a = -softplus(log p(x) - log eps)``.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..densities import ClassDensities
from ..errors import InputError
from ..sphere import project_to_sphere
from .base import Sampler, check_deadline

_PILOT = 256


class InverseRejectionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    eps_percentile: float = Field(5.0, ge=0, le=100, description="eps = the ID density at this percentile.")
    temperature: float | None = Field(
        None, ge=1e-3, le=1e3, description="Proposal broadening; None picks it so the median proposal sits at eps."
    )
    batch: int = Field(
        4096, ge=1, le=16_384, description="Proposals per class per round (16,384 x 768-d: 50 MB of float32)."
    )
    max_rounds: int = Field(1000, ge=1, le=100_000, description="Give up (error) after this many rounds.")


def auto_temperature(fit: ClassDensities, classes: np.ndarray, target_logp: np.ndarray, rng) -> np.ndarray:
    """Per-class temperature putting the median proposal at ``target_logp``.

    In whitened coordinates the drop of log-density below the mode grows
    linearly with the temperature, so one pilot batch at T=1 is enough:
    ``T = (log p(mode) - target) / (log p(mode) - median log p at T=1)``.
    """
    pilot = fit.sample_stack(classes, _PILOT, rng)
    mode = project_to_sphere(fit.centers_[classes])[:, None, :]
    top = fit.log_density_stack(mode, classes)[:, 0]
    typical = np.median(fit.log_density_stack(pilot, classes), axis=1)
    return np.clip((top - target_logp) / np.maximum(top - typical, 1e-12), 1.0, 1e3)


class InverseRejectionSampler(Sampler):
    name = "inverse_rejection"
    needs_bank = False
    blas_threads = 1
    Params = InverseRejectionParams

    def _sample_block(self, fit: ClassDensities, classes, n, rng, bank=None) -> np.ndarray:
        p = self.params
        log_eps = fit.logpdf_at_percentile(p.eps_percentile, classes)
        temps = (
            np.full(len(classes), p.temperature)
            if p.temperature is not None
            else auto_temperature(fit, classes, log_eps, rng)
        )
        kept: list[list[np.ndarray]] = [[] for _ in classes]
        counts = np.zeros(len(classes), dtype=np.int64)
        for _ in range(p.max_rounds):
            check_deadline()  # the request's time budget (base.check_deadline)
            todo = np.flatnonzero(counts < n)
            if todo.size == 0:
                break
            for i in todo:  # classes differ in temperature, so proposals are drawn per class
                check_deadline()  # per class too: a round over 100 classes of large batches is many seconds
                X = fit.sample_stack(classes[i : i + 1], p.batch, rng, temperature=float(temps[i]), dtype=np.float32)
                logp = fit.log_density_stack(X, classes[i : i + 1])[0]
                log_accept = -np.logaddexp(0.0, logp - log_eps[i])
                ok = np.log(rng.uniform(size=logp.shape)) < log_accept
                take = X[0][ok][: n - counts[i]]
                kept[i].append(take)
                counts[i] += len(take)
        else:
            if (counts < n).any():
                worst = int(np.argmin(counts))
                raise InputError(  # bad parameters for this fit: a 422, not a server error
                    "max_rounds",
                    f"inverse_rejection class {int(classes[worst])} accepted only {counts[worst]} of {n} after "
                    f"{p.max_rounds} rounds; raise max_rounds or temperature",
                )
        return np.stack([np.concatenate(k)[:n] for k in kept])
