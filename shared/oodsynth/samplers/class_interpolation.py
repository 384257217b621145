"""Class interpolation: geodesic points between a class's features and those of its nearest classes.

For each vector: a random ID feature of the source class, a random feature of
one of its ``n_neighbors`` nearest classes (by the cosine between class mean
directions), and the point at fraction ``lam`` ~ U[lam_range] of the great-circle
arc between them (slerp; 0 = the source feature, 1 = the partner). With
``lam`` around 0.5 the points sit near the boundary between the two classes.
It is the cheap control that ``boundary_crossing`` has to beat: no classifier,
no gradient, just midpoints. Diagnostics add the anchor classifier's
``margin`` and ``target_class``.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..bank import FeatureBank
from ..densities import ClassDensities
from ..errors import InputError
from .base import Sampler, unit_class_features
from .geodesic import slerp


class ClassInterpolationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lam_range: tuple[float, float] = Field(
        (0.35, 0.65), description="Range of the slerp fraction towards the partner class."
    )
    n_neighbors: int = Field(
        3, ge=1, le=1_000, description="Partner classes: this many nearest classes (by mean direction)."
    )

    @field_validator("lam_range")
    @classmethod
    def _range(cls, v):
        low, high = v
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"lam_range must satisfy 0 <= low <= high <= 1, got {v}")
        return (float(low), float(high))


def nearest_classes(means: np.ndarray, k: int) -> np.ndarray:
    """(C, k) indices of each class's ``k`` nearest other classes by cosine of mean directions."""
    sim = means @ means.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


class ClassInterpolationSampler(Sampler):
    name = "class_interpolation"
    needs_bank = True
    reports_margin = True
    Params = ClassInterpolationParams

    def _sample_block(self, fit: ClassDensities, classes, n, rng, bank: FeatureBank | None) -> np.ndarray:
        assert bank is not None  # needs_bank: sample() refuses a call without one
        p = self.params
        n_classes, dim = fit._check_fitted()
        if n_classes < 2:
            raise InputError("method", "class_interpolation needs at least two classes")
        dt = np.float32
        neighbours = nearest_classes(fit.means_, min(p.n_neighbors, n_classes - 1))
        feats = {}

        def class_feats(c: int) -> np.ndarray:
            if c not in feats:
                feats[c] = unit_class_features(bank, c)
            return feats[c]

        out = np.empty((len(classes), n, dim), dtype=dt)
        for k, c in enumerate(classes):
            own = class_feats(int(c))
            a = own[rng.integers(len(own), size=n)]
            partners = neighbours[int(c)][rng.integers(neighbours.shape[1], size=n)]
            b = np.empty_like(a)
            for j in np.unique(partners):
                rows = partners == j
                other = class_feats(int(j))
                b[rows] = other[rng.integers(len(other), size=int(rows.sum()))]
            lam = rng.uniform(*p.lam_range, size=n).astype(dt)
            out[k] = slerp(a, b, lam)
        return out
