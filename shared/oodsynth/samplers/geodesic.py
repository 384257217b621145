"""Moves on the unit sphere in any dimension: tangent projection, the exponential map, slerp.

The samplers that walk between classes (boundary crossing, class
interpolation, spherical HMC) move along great circles; these few lines are
all they share. Arrays are (..., D) rows of unit vectors, broadcast like numpy.
"""

from __future__ import annotations

import numpy as np


def rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product (..., D) x (..., D) -> (..., 1), kept for broadcasting."""
    return np.einsum("...d,...d->...", a, b)[..., None]


def rownorm(a: np.ndarray) -> np.ndarray:
    """Row norms (..., 1); several times faster than np.linalg.norm on many short rows."""
    return np.sqrt(rowdot(a, a))


def to_tangent(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The component of ``v`` orthogonal to the unit vector ``x`` (the tangent space at ``x``)."""
    return v - rowdot(x, v) * x


def exp_map(x: np.ndarray, direction: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Walk ``angle`` radians from ``x`` along the unit tangent ``direction``: cos(a) x + sin(a) u."""
    angle = np.asarray(angle, dtype=x.dtype)
    if angle.ndim == x.ndim - 1:
        angle = angle[..., None]
    return np.cos(angle) * x + np.sin(angle) * direction


def geodesic_flow(x: np.ndarray, v: np.ndarray, t: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Follow the great circle through ``x`` with tangent velocity ``v`` for time ``t``: (position, velocity).

    With speed s = |v|: x(t) = x cos(st) + (v/s) sin(st), v(t) = -x s sin(st) + v cos(st);
    the speed and the tangency are preserved exactly (zero velocity stays put).
    """
    speed = rownorm(v)
    st = speed * t
    safe = np.where(speed > 0, speed, 1.0)
    cos, sin = np.cos(st), np.sin(st)
    return x * cos + v * (sin / safe), -x * (speed * sin) + v * cos


def slerp(a: np.ndarray, b: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Points at fraction ``lam`` (..., ) of the great-circle arc from unit ``a`` to unit ``b``.

    Falls back to the normalised chord where ``a`` and ``b`` (nearly) coincide.
    """
    lam = np.asarray(lam, dtype=a.dtype)[..., None]
    cos = np.clip(rowdot(a, b), -1.0, 1.0)
    omega = np.arccos(cos)
    sin = np.sin(omega)
    close = sin < 1e-6
    safe = np.where(close, 1.0, sin)
    out = np.where(close, (1 - lam) * a + lam * b, (np.sin((1 - lam) * omega) * a + np.sin(lam * omega) * b) / safe)
    return out / np.linalg.norm(out, axis=-1, keepdims=True)
