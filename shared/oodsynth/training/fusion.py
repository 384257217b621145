"""Fused detectors: several pytorch-ood detectors on one model, each standardised on the ID train set, summed.

A name such as ``energy+mahalanobis`` is one detector. Why fuse: a logit score (energy) and a feature-space
distance (Mahalanobis, KNN, ViM) fail on different inputs. Energy separates the held-out classes that the
classifier's logits see as unfamiliar, but ranks uniform noise or inverted images as confidently in-distribution
(a known failure of logit scores); a class-conditional distance catches exactly those, and is weaker near the
class boundaries. Each part's outlier score is centred and scaled by its mean and standard deviation on ID train
images it was not fitted on (two-fold cross-fitting), so neither part's units decide; the sum is the fused score.

pytorch-ood has no such combination (its detectors are single scores), so it is written here; the parts are
pytorch-ood's own through ``training.detectors``. Same interface as ``detectors.Detector``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data import ImageData
from ..errors import InputError

SEPARATOR = "+"


def is_fused(name: str) -> bool:
    return SEPARATOR in name


def fused_parts(name: str) -> list[str]:
    """The detector names in a fused name; each must be a known detector that scores features or logits."""
    from .detectors import DETECTORS

    parts = [p.strip() for p in name.split(SEPARATOR)]
    if len(parts) < 2 or len(set(parts)) != len(parts):
        raise InputError("score", f"{name!r}: a fused score names two or more different detectors, e.g. energy+vim")
    for p in parts:
        if p not in DETECTORS:
            raise InputError("score", f"{name!r}: unknown detector {p!r}; choose from {', '.join(DETECTORS)}")
        if DETECTORS[p].representation == "inputs":
            raise InputError("score", f"{name!r}: {p} needs input gradients and cannot be fused")
    return parts


class FusedDetector:
    """The sum of its parts' outlier scores, each standardised by its ID-train mean and std (higher = more OOD)."""

    def __init__(self, name: str, model, params: dict[str, dict] | None = None):
        from .detectors import build_detector

        self.name, self.model, self.params = name, model, params or {}
        self.parts = [build_detector(p, model, **self.params.get(p, {})) for p in fused_parts(name)]
        self.fitted = False
        self.scale: list[tuple[float, float]] = []

    def fit(self, train: ImageData | Dataset | DataLoader, *, batch_size: int = 256) -> FusedDetector:
        """Fit every part on the ID train set; each part's scale is the mean and std of its scores on ID data it
        was not fitted on (two folds of the train set, each scored by the part fitted on the other): in-sample
        scores are biased, and degenerate for KNN, whose nearest train neighbour is the sample itself."""
        from .detectors import Features, build_detector, extract

        feats = train if isinstance(train, Features) else extract(self.model, train, batch_size=batch_size)
        order = np.random.default_rng(0).permutation(len(feats.labels))
        folds = [torch.from_numpy(np.sort(f)) for f in np.array_split(order, 2)]

        def subset(idx: torch.Tensor) -> Features:
            return Features(feats.penultimate[idx], feats.logits[idx], feats.labels[idx])

        self.scale = []
        for part in self.parts:
            part.fit(feats)
            held_out = np.concatenate(
                [
                    build_detector(part.name, self.model, **self.params.get(part.name, {}))
                    .fit(subset(fit_on))
                    .score(subset(score_on))
                    for fit_on, score_on in (folds, folds[::-1])
                ]
            )
            sd = float(np.std(held_out))
            self.scale.append((float(np.mean(held_out)), sd if np.isfinite(sd) and sd > 0 else 1.0))
        self.fitted = True
        return self

    def score(self, data, *, batch_size: int = 256) -> np.ndarray:
        from .detectors import Features, extract

        if not self.fitted:
            raise InputError("score", f"{self.name} must be fitted on the ID train set first")
        if not isinstance(data, Features) and not hasattr(data, "shape"):
            data = extract(self.model, data, batch_size=batch_size)
        return np.sum([(p.score(data) - mu) / sd for p, (mu, sd) in zip(self.parts, self.scale)], axis=0)
