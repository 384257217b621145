"""Evaluate an OOD classifier: ID accuracy and, per OOD set, FPR95 / AUROC / AUPR-in / AUPR-out.

Every post-hoc detector comes from pytorch-ood through ``training.detectors`` (``energy``, ``msp``, ``vim``,
...). Two scores are the project's own, because pytorch-ood has none like them: ``phi``, the probability of ID
from the logistic head trained on the energy together with the outliers (only for models trained with the
energy-logistic loss; a baseline's phi never saw a label), and ``density``: the text-aligned encoder's unit
feature scored by the fitted class densities (``densities/``, any kind), max over classes of the log-density;
it needs no classifier at all. Inside this module scores are "higher = more ID". Results as JSON-ready dicts
and rich tables, with the average over OOD sets as papers report it (in percent).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from rich.table import Table
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import ImageData
from ..densities import ClassDensities
from ..encoding.encoder import TextAlignedEncoder
from ..encoding.features import extract_features
from .classifier import OODClassifier, energy
from .detectors import DETECTORS
from .metrics import accuracy, ood_metrics

HAND_WRITTEN_SCORES = ("phi", "density")
SCORE_KINDS = (*DETECTORS, *HAND_WRITTEN_SCORES)

METRIC_NAMES = ("fpr95", "auroc", "aupr_in", "aupr_out")
METRIC_LABELS = {"fpr95": "FPR95 ↓", "auroc": "AUROC ↑", "aupr_in": "AUPR-in ↑", "aupr_out": "AUPR-out ↑"}


@torch.no_grad()
def score_images(
    clf: OODClassifier, data: ImageData, *, batch_size: int = 256, progress: bool = True
) -> dict[str, np.ndarray]:
    """Per image: ``energy`` score (pytorch-ood's, negated: logsumexp f), ``phi`` (P(ID)), ``prediction``, ``label``."""
    from pytorch_ood.detector import EnergyBased

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
        out["energy"].append((-EnergyBased.score(logits)).cpu().numpy())
        out["phi"].append(torch.sigmoid(clf.phi(energy(logits))).cpu().numpy())
        out["prediction"].append(logits.argmax(1).cpu().numpy())
        out["label"].append(np.asarray(y))
    return {k: np.concatenate(v) for k, v in out.items()}


def max_class_log_density(fit: ClassDensities, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the highest log-density over the fit's classes, and that class."""
    features = np.asarray(features, dtype=np.float64)
    logp = np.stack([fit.score_samples(features, np.full(len(features), c)) for c in range(fit.n_classes)])
    return logp.max(axis=0), logp.argmax(axis=0)


def density_scores(
    encoder: TextAlignedEncoder, fit: ClassDensities, data: ImageData, *, batch_size: int = 256, progress: bool = True
) -> dict[str, np.ndarray]:
    """Per image: ``density`` score (max class log-density of its encoder feature), ``prediction``, ``label``."""
    if encoder.dim != fit.dim:
        raise ValueError(f"fit: its dimension {fit.dim} differs from the encoder's output {encoder.dim}")
    features, labels = extract_features(encoder, data, batch_size=batch_size, progress=progress)
    score, prediction = max_class_log_density(fit, features)
    return {"density": score, "prediction": prediction, "label": labels}


@dataclass
class EvaluationReport:
    id_accuracy: float
    n_id: int
    # results[score][ood_set] = {"fpr95", "auroc", "aupr_in", "aupr_out", "n"}
    results: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def average(self, score: str) -> dict[str, float]:
        rows = list(self.results[score].values())
        return {m: float(np.mean([r[m] for r in rows])) for m in METRIC_NAMES}

    def to_dict(self) -> dict:
        return {
            "id_accuracy": self.id_accuracy,
            "n_id": self.n_id,
            "scores": {s: {**sets, "average": self.average(s)} for s, sets in self.results.items()},
        }

    def table(self, title: str = "OOD evaluation") -> Table:
        table = Table(title=f"{title} (ID accuracy {100 * self.id_accuracy:.2f}%, n_id={self.n_id})")
        for col in ("score", "OOD set", "n", *METRIC_LABELS.values()):
            table.add_column(col, justify="right" if col not in ("score", "OOD set") else "left")
        for score, sets in self.results.items():
            for name, m in sets.items():
                table.add_row(score, name, str(int(m["n"])), *(f"{100 * m[k]:.2f}" for k in METRIC_NAMES))
            avg = self.average(score)
            table.add_row(
                score,
                "[bold]average[/bold]",
                "",
                *(f"[bold]{100 * avg[k]:.2f}[/bold]" for k in METRIC_NAMES),
                end_section=True,
            )
        return table


def _report(scorer, kinds: list[str], id_data: ImageData, ood_sets: dict[str, ImageData]) -> EvaluationReport:
    """Score ID and every OOD set with ``scorer(data) -> dict`` and fill the metrics of each score kind."""
    if not ood_sets:
        raise ValueError("ood_sets: give at least one OOD dataset")
    id_scores = scorer(id_data)
    report = EvaluationReport(accuracy(id_scores["prediction"], id_scores["label"]), len(id_scores["label"]))
    for name, data in ood_sets.items():
        ood_scores = scorer(data)
        for kind in kinds:
            m = ood_metrics(id_scores[kind], ood_scores[kind])
            report.results.setdefault(kind, {})[name] = {**m, "n": float(len(ood_scores[kind]))}
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


def merge_reports(*reports: EvaluationReport) -> EvaluationReport:
    """One report holding every score of several reports on the same ID set (the first one's accuracy)."""
    merged = EvaluationReport(reports[0].id_accuracy, reports[0].n_id)
    for rep in reports:
        merged.results.update(rep.results)
    return merged
