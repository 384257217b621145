"""Post-hoc OOD detectors from pytorch-ood, fitted to a trained classifier; one registry for evaluate and the lab.

Every score here is higher = more ID (``api.SCORE_SIGN``; ``posthoc.PytorchOODDetector`` converts pytorch-ood's
sign where it calls it)::

    det = build_detector("vim", model, d=64)       # model: OODClassifier, FeatureClassifier or TextAlignedEncoder
    det.fit(train)                                  # ID train set: ImageData, Dataset, DataLoader or Features
    det.score(images)                               # a (B, C, H, W) tensor, ImageData/Dataset or Features -> numpy (B,)
    report = evaluate_detectors(model, train, id_test, {"digits:ood": ood}, names=["all"])  # an EvaluationReport

``DETECTORS`` (``posthoc``) names every detector (``all`` = every one of them); a name joining two or more with
``+`` (``energy+mahalanobis``) is a ``FusedDetector`` (at the end of this module).

Left out, because they do not fit these models: GMM (per-class covariances are singular when the feature is wider
than a class is large), MultiMahalanobis, Gram and NACUE (several hooked layers), MCD (no dropout), RankFeat (an
SVD of real spatial maps), OpenMax (its own API), TemperatureScaling (fits T on held-out data, not the train set),
WeightedEBO (needs class weights), MCM (CLIP), GradNorm and MahalanobisODIN (input gradients of every sample,
slower than the rest put together). The project's own scores stay in ``training.evaluation`` because pytorch-ood
has no equivalent: ``phi`` (the logistic head trained with the outliers) and ``density`` (the fitted class
densities of ``densities/`` on the text-aligned feature, of any density kind, without a classifier).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data import ImageData
from ..errors import InputError
from .api import require_ood_sets
from .metrics import accuracy
from .posthoc import DETECTORS, DetectorSpec, Features, ModelParts, PytorchOODDetector, extract, model_parts
from .report import EvaluationReport

__all__ = [
    "DETECTORS",
    "SEPARATOR",
    "DetectorSpec",
    "Features",
    "FusedDetector",
    "ModelParts",
    "PytorchOODDetector",
    "build_detector",
    "evaluate_detectors",
    "extract",
    "fused_parts",
    "is_fused",
    "model_parts",
    "resolve_names",
]


def build_detector(name: str, model, **params) -> PytorchOODDetector | FusedDetector:
    """``DETECTORS[name]`` on ``model``, with pytorch-ood keyword ``params`` (e.g. ``k=100``, ``d=64``); a fused
    name (``energy+mahalanobis``, ``FusedDetector``) takes ``params`` per part (``knn={"k": 1}``)."""
    if is_fused(name):
        return FusedDetector(name, model, params)
    return PytorchOODDetector(name, model, **params)


def resolve_names(names: Iterable[str] | None) -> list[str]:
    """Detector names with ``all`` expanded, duplicates dropped, order kept; unknown names name the field. A fused
    name (``energy+vim``) is one detector; ``all`` does not include fused ones."""
    out: list[str] = []
    for name in names or ["all"]:
        for n in DETECTORS if name == "all" else [name]:
            if is_fused(n):
                fused_parts(n)  # names the field when a part is unknown
            elif n not in DETECTORS:
                raise InputError("score", f"unknown detector {n!r}; choose from all, {', '.join(DETECTORS)}")
            if n not in out:
                out.append(n)
    return out


def evaluate_detectors(
    model,
    train: ImageData | Dataset | DataLoader | Features,
    id_data: ImageData,
    ood_sets: dict[str, ImageData],
    *,
    names: Sequence[str] | None = None,
    params: dict[str, dict] | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> EvaluationReport:
    """An ``EvaluationReport`` (FPR95 / AUROC / AUPR per OOD set) for each detector, fitted on ``train``.

    Every dataset goes through the model once; the detectors share its ``Features``.
    """
    require_ood_sets(ood_sets)
    names = resolve_names(names)
    params = params or {}  # per detector; a fused detector takes them all, per part
    detectors = [build_detector(n, model, **(params if is_fused(n) else params.get(n, {}))) for n in names]
    if any(not d.fitted for d in detectors):
        train_feats = train if isinstance(train, Features) else extract(model, train, batch_size=batch_size)
        for det in detectors:
            det.fit(train_feats)
    id_feats = extract(model, id_data, batch_size=batch_size, progress=progress)
    report = EvaluationReport(
        accuracy(id_feats.logits.argmax(1).numpy(), id_feats.labels.numpy()), len(id_feats.labels)
    )
    id_scores = {d.name: d.score(id_feats, batch_size=batch_size) for d in detectors}
    for set_name, data in ood_sets.items():
        feats = extract(model, data, batch_size=batch_size, progress=progress)
        report.add_set(set_name, id_scores, {d.name: d.score(feats, batch_size=batch_size) for d in detectors})
    return report


# Fused detectors: several pytorch-ood detectors on one model, each standardised on the ID train set, summed.
#
# A name such as ``energy+mahalanobis`` is one detector. Why fuse: a logit score (energy) and a feature-space
# distance (Mahalanobis, KNN, ViM) fail on different inputs. Energy separates the held-out classes that the
# classifier's logits see as unfamiliar, but ranks uniform noise or inverted images as confidently in-distribution
# (a known failure of logit scores); a class-conditional distance catches exactly those, and is weaker near the
# class boundaries. Each part's score is centred and scaled by its mean and standard deviation on ID train
# images it was not fitted on (two-fold cross-fitting), so neither part's units decide; the sum is the fused score.
#
# pytorch-ood has no such combination (its detectors are single scores), so it is written here; the parts are
# pytorch-ood's own through ``PytorchOODDetector``, and ``FusedDetector`` keeps the same ``api.Detector`` contract.

SEPARATOR = "+"


def is_fused(name: str) -> bool:
    return SEPARATOR in name


def fused_parts(name: str) -> list[str]:
    """The detector names in a fused name; each must be a known detector that scores features or logits."""
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
    """The sum of its parts' scores, each standardised by its ID-train mean and std (higher = more ID)."""

    def __init__(self, name: str, model, params: dict[str, dict] | None = None):
        self.name, self.model, self.params = name, model, params or {}
        self.parts = [
            PytorchOODDetector(p, model, **self.params.get(p, {})) for p in fused_parts(name)
        ]  # none is fused
        self.fitted = False
        self.scale: list[tuple[float, float]] = []

    def fit(self, train: ImageData | Dataset | DataLoader | Features, *, batch_size: int = 256) -> FusedDetector:
        """Fit every part on the ID train set; each part's scale is the mean and std of its scores on ID data it
        was not fitted on (two folds of the train set, each scored by the part fitted on the other): in-sample
        scores are biased, and degenerate for KNN, whose nearest train neighbour is the sample itself."""
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
        """The standardised parts summed (higher = more ID), the data pushed through the model once."""
        if not self.fitted:
            raise InputError("score", f"{self.name} must be fitted on the ID train set first")
        data = self.parts[0].features(data, batch_size=batch_size)  # once, shared by every part
        return np.sum([(p.score(data) - mu) / sd for p, (mu, sd) in zip(self.parts, self.scale)], axis=0)
