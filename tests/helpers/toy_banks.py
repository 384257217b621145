"""One toy feature bank for the API, registry, CLI and generation tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from oodsynth.bank import FeatureBank


def toy_bank(
    n_classes: int = 3,
    n_per_class: int = 40,
    dim: int = 16,
    *,
    spread: float = 0.05,
    seed: int = 0,
    anchor_norms: float | Sequence[float] = 0.38,
    names: Sequence[str] | None = None,
) -> FeatureBank:
    """Unit features scattered around random class directions; anchors of SD-like norm (~0.38)."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(n_classes, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    feats = directions[labels] + spread * rng.normal(size=(labels.size, dim))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    anchors = np.broadcast_to(np.asarray(anchor_norms, dtype=float), (n_classes,))[:, None] * directions
    names = list(names) if names is not None else [f"class_{chr(97 + c)}" for c in range(n_classes)]
    return FeatureBank.from_arrays(feats.astype(np.float32), labels, anchors.astype(np.float32), names)
