"""Evaluate an OOD classifier: ID accuracy and, per OOD set, FPR95 / AUROC / AUPR-in / AUPR-out.

Every post-hoc detector comes from pytorch-ood through ``training.detectors`` (``energy``, ``msp``, ``vim``,
...). Two scores are the project's own, because pytorch-ood has none like them: ``phi``, the probability of ID
from the logistic head trained on the energy together with the outliers (only for models trained with the
energy-logistic loss; a baseline's phi never saw a label), and ``density``: the text-aligned encoder's unit
feature scored by the fitted class densities (``densities/``, any kind), max over classes of the log-density;
it needs no classifier at all. Every score is higher = more ID (``api.SCORE_SIGN``); ``PhiScore`` and
``DensityScore`` are the two as ``api.Detector`` objects. Results go into a ``training.report.EvaluationReport``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import ImageData
from ..densities import ClassDensities
from ..encoding.encoder import TextAlignedEncoder
from ..encoding.features import extract_features
from ..errors import InputError
from .api import Detector, require_ood_sets
from .classifier import OODClassifier, energy
from .detectors import DETECTORS, FusedDetector, PytorchOODDetector
from .metrics import accuracy
from .report import EvaluationReport

HAND_WRITTEN_SCORES = ("phi", "density")
SCORE_KINDS = (*DETECTORS, *HAND_WRITTEN_SCORES)


@torch.no_grad()
def score_images(
    clf: OODClassifier, data: ImageData, *, batch_size: int = 256, progress: bool = True
) -> dict[str, np.ndarray]:
    """Per image: ``energy`` score (-E(x) = logsumexp f, higher = more ID), ``phi`` (P(ID)), ``prediction``,
    ``label``."""
    device = next(clf.model.parameters()).device
    clf.model.eval()
    clf.phi.eval()
    out: dict[str, list] = {"energy": [], "phi": [], "prediction": [], "label": []}
    for x, y in tqdm(
        DataLoader(data.dataset, batch_size=batch_size),
        desc=f"score {data.name}",
        unit="batch",
        disable=not progress,
        leave=False,
    ):
        logits = clf.model(x.to(device))
        out["energy"].append((-energy(logits)).cpu().numpy())
        out["phi"].append(torch.sigmoid(clf.phi(energy(logits))).cpu().numpy())
        out["prediction"].append(logits.argmax(1).cpu().numpy())
        out["label"].append(np.asarray(y))
    return {k: np.concatenate(v) for k, v in out.items()}


def max_class_log_density(fit: ClassDensities, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the highest log-density over the fit's classes, and that class."""
    features = np.asarray(features, dtype=np.float64)
    n_classes, _ = fit._check_fitted()
    logp = np.stack([fit.score_samples(features, np.full(len(features), c)) for c in range(n_classes)])
    return logp.max(axis=0), logp.argmax(axis=0)


def density_scores(
    encoder: TextAlignedEncoder, fit: ClassDensities, data: ImageData, *, batch_size: int = 256, progress: bool = True
) -> dict[str, np.ndarray]:
    """Per image: ``density`` score (max class log-density of its encoder feature), ``prediction``, ``label``."""
    if encoder.dim != fit.dim:
        raise InputError("fit", f"its dimension {fit.dim} differs from the encoder's output {encoder.dim}")
    features, labels = extract_features(encoder, data, batch_size=batch_size, progress=progress)
    score, prediction = max_class_log_density(fit, features)
    return {"density": score, "prediction": prediction, "label": labels}


class PhiScore:
    """The trained score as an ``api.Detector``: P(ID) from the logistic head phi on the energy. Meaningful only
    for a model trained with outliers and the energy-logistic loss (a baseline's phi never saw a label)."""

    name = "phi"

    def __init__(self, clf: OODClassifier):
        self.clf = clf

    def fit(self, train=None, *, batch_size: int = 256) -> PhiScore:
        """Nothing to fit: phi was trained with the model."""
        return self

    def score(self, data: ImageData, *, batch_size: int = 256) -> np.ndarray:
        return score_images(self.clf, data, batch_size=batch_size, progress=False)["phi"]


class DensityScore:
    """The density score as an ``api.Detector``: the max class log-density of the encoder's feature under a fit of
    ``densities/`` (made beforehand from a feature bank, hence no ``fit`` here)."""

    name = "density"

    def __init__(self, encoder: TextAlignedEncoder, fit: ClassDensities):
        if encoder.dim != fit.dim:
            raise InputError("fit", f"its dimension {fit.dim} differs from the encoder's output {encoder.dim}")
        self.encoder, self.densities = encoder, fit

    def fit(self, train=None, *, batch_size: int = 256) -> DensityScore:
        """Nothing to fit: the class densities were fitted on a feature bank."""
        return self

    def score(self, data: ImageData, *, batch_size: int = 256) -> np.ndarray:
        return density_scores(self.encoder, self.densities, data, batch_size=batch_size, progress=False)["density"]


def _report(scorer, kinds: list[str], id_data: ImageData, ood_sets: dict[str, ImageData]) -> EvaluationReport:
    """Score ID and every OOD set with ``scorer(data) -> dict`` and fill the metrics of each score kind."""
    require_ood_sets(ood_sets)
    id_scores = scorer(id_data)
    report = EvaluationReport(accuracy(id_scores["prediction"], id_scores["label"]), len(id_scores["label"]))
    for name, data in ood_sets.items():
        ood_scores = scorer(data)
        report.add_set(name, id_scores, {kind: ood_scores[kind] for kind in kinds})
    return report


def evaluate(
    clf: OODClassifier,
    id_data: ImageData,
    ood_sets: dict[str, ImageData],
    *,
    batch_size: int = 256,
    progress: bool = True,
) -> EvaluationReport:
    """Score the ID test set and every OOD set; phi's score only when phi was trained (outliers, logistic loss)."""
    phi_trained = clf.uses_outliers and clf.config.ood_loss == "energy_logistic"
    kinds = ["energy", "phi"] if phi_trained else ["energy"]
    return _report(lambda d: score_images(clf, d, batch_size=batch_size, progress=progress), kinds, id_data, ood_sets)


def evaluate_density(
    encoder: TextAlignedEncoder,
    fit: ClassDensities,
    id_data: ImageData,
    ood_sets: dict[str, ImageData],
    *,
    batch_size: int = 256,
    progress: bool = True,
) -> EvaluationReport:
    """The ``density`` score on the ID test set and every OOD set; ID accuracy is the densest class's."""
    return _report(
        lambda d: density_scores(encoder, fit, d, batch_size=batch_size, progress=progress),
        ["density"],
        id_data,
        ood_sets,
    )


if TYPE_CHECKING:  # mypy holds every score to the one contract
    _SCORES: tuple[type[Detector], ...] = (PytorchOODDetector, FusedDetector, PhiScore, DensityScore)
