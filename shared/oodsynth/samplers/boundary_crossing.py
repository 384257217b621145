"""Boundary crossing (after BOOD, ICML 2025): push the ID features nearest a decision boundary across it.

The classifier is the anchor classifier cos(z, T(y))/t the encoder was
trained with (the fit's anchors). Per class:

1. start points: the ``select`` correctly classified ID features with the
   smallest top-2 margin, each paired with its runner-up (rival) class;
   chains cycle through them, each start moved by a small random tangent
   ``jitter`` (an angle in radians) so that 10,000 vectors are not 100 copies;
2. normalised gradient steps of ``step_size`` radians on the sphere that raise
   the rival's logit over the source's, until the rival wins (the prediction
   has left the source class), then ``steps_beyond`` steps more.

The objective logit_rival - logit_source = (T^_rival - T^_source) . z / t is
linear in z, so its gradient on the sphere always points along the great
circle from z towards the direction d = T^_rival - T^_source: the whole walk
stays on that circle and the step at which the rival wins has a closed form
(angle theta* = atan2(-d.z0, |d_tangent|), steps = floor(theta*/step) + 1).
Computing it directly gives exactly the vectors the step-by-step loop gives
(a test checks this) at the cost of one step; it is what makes 10,000 vectors
per class in 768-d cost well under a second. A walk never passes d's own
direction (where the margin peaks). Every returned vector is assigned to a
class other than its source; the diagnostics add that ``margin`` (negative)
and the ``target_class``.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..bank import FeatureBank
from ..densities import ClassDensities
from .anchor_classifier import boundary_points, unit_anchors
from .base import Sampler, check_deadline, unit_class_features
from .geodesic import exp_map, rowdot, to_tangent


class BoundaryCrossingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # 600 and 8 measured best in the OOD lab (animals, about 700 ID features per class: one start per vector of a
    # pool): bench/results/boundary_crossing_params/ and docs/results.md
    select: int = Field(
        600, ge=1, le=100_000, description="Start points per class: the ID features with the smallest top-2 margin."
    )
    step_size: float = Field(
        0.02, ge=1e-6, le=0.5, description="Angle (radians) of one normalised gradient step on the sphere."
    )
    steps_beyond: int = Field(8, ge=0, le=1_000, description="Steps taken after the prediction has flipped.")
    jitter: float = Field(
        0.02, ge=0, le=1.0, description="Typical angle (radians) of the random tangent move applied to each start."
    )


def crossing_walk(
    x0: np.ndarray, direction: np.ndarray, step_size: float, steps_beyond: int
) -> tuple[np.ndarray, np.ndarray]:
    """Closed form of the normalised ascent of ``direction . z`` from ``x0`` (..., D): (end points, steps taken).

    Steps continue until ``direction . z > 0`` and then ``steps_beyond`` more;
    the angle walked is capped at the angle to ``direction`` (the maximum).
    """
    a = rowdot(direction, x0)[..., 0]  # d . x0 (< 0 before the crossing)
    tangent = to_tangent(x0, direction)
    b = np.linalg.norm(tangent, axis=-1)  # d . u with u the unit tangent
    u = tangent / np.where(b > 0, b, 1.0)[..., None]
    theta_cross = np.arctan2(-a, b)  # where d . z(theta) = a cos + b sin = 0
    steps = np.where(a <= 0, np.floor(theta_cross / step_size) + 1, 0) + steps_beyond
    theta = np.minimum(steps * step_size, np.arctan2(b, a))  # arctan2(b, a): the angle to direction
    return exp_map(x0, u, theta.astype(x0.dtype)), steps.astype(np.int64)


def stepwise_crossing(
    x0: np.ndarray, direction: np.ndarray, step_size: float, steps_beyond: int, max_steps: int = 100_000
) -> np.ndarray:
    """The same walk step by step, a reference used only by tests: normalised Riemannian gradient steps of ``direction . z``."""
    x = x0.copy()
    left = np.full(x.shape[:-1], steps_beyond)
    for _ in range(max_steps):
        check_deadline()  # the request's time budget (base.check_deadline)
        crossed = rowdot(direction, x)[..., 0] > 0
        move = ~crossed | (left > 0)
        if not move.any():
            break
        left = np.where(crossed & move, left - 1, left)
        g = to_tangent(x, direction)
        g /= np.linalg.norm(g, axis=-1, keepdims=True)
        x = np.where(move[..., None], exp_map(x, g, np.full(x.shape[:-1], step_size, dtype=x.dtype)), x)
    return x


class BoundaryCrossingSampler(Sampler):
    name = "boundary_crossing"
    needs_bank = True
    reports_margin = True
    Params = BoundaryCrossingParams

    def _sample_block(self, fit: ClassDensities, classes, n, rng, bank: FeatureBank | None) -> np.ndarray:
        assert bank is not None  # needs_bank: sample() refuses a call without one
        p = self.params
        _, dim = fit._check_fitted()
        dt = np.float32
        A = unit_anchors(fit.anchors_, dt)
        X0 = np.empty((len(classes), n, dim), dtype=dt)
        direction = np.empty_like(X0)
        for k, c in enumerate(classes):
            feats = unit_class_features(bank, c)
            starts, rivals, _ = boundary_points(feats, int(c), A, p.select)
            pick = rng.permutation(np.arange(n) % len(starts))  # every start used equally often
            X0[k] = starts[pick]
            direction[k] = A[rivals[pick]] - A[int(c)]
        if p.jitter > 0:
            noise = to_tangent(X0, rng.standard_normal(X0.shape, dtype=dt))
            X0 += noise * dt(p.jitter / np.sqrt(dim - 1))
            X0 /= np.linalg.norm(X0, axis=-1, keepdims=True)
        X, _ = crossing_walk(X0, direction, p.step_size, p.steps_beyond)
        return X
