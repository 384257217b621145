"""Outlier samplers: draw vectors from the low-density regions of each class.

``get_sampler(name, params)`` is the one entry point the API, CLI and
benchmarks use; each sampler validates its own pydantic ``Params``.
"""

from __future__ import annotations

from ..errors import InputError
from .barker import BarkerSampler
from .base import Sampler, SampleResult, compute_diagnostics
from .boundary_crossing import BoundaryCrossingSampler
from .class_interpolation import ClassInterpolationSampler
from .inverse_rejection import InverseRejectionSampler
from .inverse_sgld import InverseSGLDSampler
from .knn_boundary import KnnBoundarySampler
from .sphere_hmc import SphereHMCSampler

SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls
    for cls in (
        KnnBoundarySampler,
        InverseSGLDSampler,
        InverseRejectionSampler,
        BarkerSampler,
        BoundaryCrossingSampler,
        ClassInterpolationSampler,
        SphereHMCSampler,
    )
}

# The method used when a request names none (API, CLI, demo): the sampler with the largest measured near-OOD gain
# on the product's path (animals, sample -> decode -> verify -> train-ood) at the OOD lab's best setting,
# paired by seed with the others: bench/results/best_setting/ood_gain_ratio1_head_to_head.md (docs/results.md).
DEFAULT_METHOD = "boundary_crossing"


class UnknownSamplerError(InputError):
    """The requested sampler name is not registered."""

    def __init__(self, name: str):
        super().__init__("method", f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
        self.name = name


def get_sampler(name: str, params: dict | None = None) -> Sampler:
    """A sampler instance; raises UnknownSamplerError or pydantic.ValidationError for bad params."""
    if name not in SAMPLERS:
        raise UnknownSamplerError(name)
    return SAMPLERS[name](**(params or {}))


__all__ = [
    "DEFAULT_METHOD",
    "SAMPLERS",
    "SampleResult",
    "Sampler",
    "UnknownSamplerError",
    "compute_diagnostics",
    "get_sampler",
]
