"""The evaluation report: per score and OOD set, FPR95 / AUROC / AUPR-in / AUPR-out against the ID test set.

Below both ``evaluation`` (the project's own scores) and ``detectors`` (pytorch-ood's), which fill it the same
way: one ``add_set`` per OOD set, with scores where higher means "more ID" (``api.SCORE_SIGN``). As
JSON-ready dicts and rich tables, with the average over OOD sets as papers report it (in percent).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from rich.table import Table

from .metrics import ood_metrics

METRIC_NAMES = ("fpr95", "auroc", "aupr_in", "aupr_out")
METRIC_LABELS = {"fpr95": "FPR95 ↓", "auroc": "AUROC ↑", "aupr_in": "AUPR-in ↑", "aupr_out": "AUPR-out ↑"}


@dataclass
class EvaluationReport:
    id_accuracy: float
    n_id: int
    # results[score][ood_set] = {"fpr95", "auroc", "aupr_in", "aupr_out", "n"}
    results: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def add_set(self, name: str, id_scores: dict[str, np.ndarray], ood_scores: dict[str, np.ndarray]) -> None:
        """The metrics of every score in ``ood_scores`` on the OOD set ``name`` (higher = more ID)."""
        for score, ood in ood_scores.items():
            m = ood_metrics(id_scores[score], ood)
            self.results.setdefault(score, {})[name] = {**m, "n": float(len(ood))}

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


def merge_reports(*reports: EvaluationReport) -> EvaluationReport:
    """One report holding every score of several reports on the same ID set (the first one's accuracy)."""
    merged = EvaluationReport(reports[0].id_accuracy, reports[0].n_id)
    for rep in reports:
        merged.results.update(rep.results)
    return merged
