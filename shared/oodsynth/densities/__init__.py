"""Class-conditional densities on the unit sphere (what a "fit" is): ``ClassDensities`` over one
``DensityFamily`` per kind (``FAMILIES``); the vMF maths in ``vmf_math``."""

from .class_densities import DENSITY_KINDS, REPORTED_QUANTILES, ClassDensities
from .families import FAMILIES, DensityFamily, DensityParams
from .vmf_math import estimate_kappa, log_bessel_iv, vmf_log_normalizer, vmf_mean_resultant

__all__ = [
    "DENSITY_KINDS",
    "FAMILIES",
    "REPORTED_QUANTILES",
    "ClassDensities",
    "DensityFamily",
    "DensityParams",
    "estimate_kappa",
    "log_bessel_iv",
    "vmf_log_normalizer",
    "vmf_mean_resultant",
]
