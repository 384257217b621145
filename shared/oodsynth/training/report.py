"""The evaluation report: per score and OOD set, FPR95 / AUROC / AUPR-in / AUPR-out against the ID test set.

Below both ``evaluation`` (the project's own scores) and ``detectors`` (pytorch-ood's), which fill it the same
way: one ``add_set`` per OOD set, with scores where higher means "more ID" (``api.SCORE_SIGN``). As
JSON-ready dicts and rich tables (a summary of the averages over OOD sets as papers report them, in percent, the
best of each column marked; ``table(full=True)`` adds every set), and as pictures (``write_plots``: ROC curves
and score histograms per OOD set). The raw scores are kept for the pictures; ``to_dict`` holds the metrics only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.table import Table

from .metrics import ood_metrics, roc_curve

METRIC_NAMES = ("fpr95", "auroc", "aupr_in", "aupr_out")
METRIC_LABELS = {"fpr95": "FPR95 ↓", "auroc": "AUROC ↑", "aupr_in": "AUPR-in ↑", "aupr_out": "AUPR-out ↑"}
LOWER_IS_BETTER = {"fpr95"}
# why two scores can coincide on every set: one is a monotone function of the other, so they rank alike
WHY_EQUAL = {
    frozenset({"phi", "energy"}): "phi is a learned function of the energy alone, P(ID) = sigmoid(phi(E(x))); "
    "monotone over these energies, it orders every image as the energy does, so every rank metric is the energy's",
}


@dataclass
class EvaluationReport:
    id_accuracy: float
    n_id: int
    # results[score][ood_set] = {"fpr95", "auroc", "aupr_in", "aupr_out", "n"}
    results: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    # the scores themselves (higher = more ID), for the pictures: id_scores[score], ood_scores[score][ood_set]
    id_scores: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    ood_scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False, compare=False)

    def add_set(self, name: str, id_scores: dict[str, np.ndarray], ood_scores: dict[str, np.ndarray]) -> None:
        """The metrics of every score in ``ood_scores`` on the OOD set ``name`` (higher = more ID)."""
        for score, ood in ood_scores.items():
            m = ood_metrics(id_scores[score], ood)
            self.results.setdefault(score, {})[name] = {**m, "n": float(len(ood))}
            self.id_scores[score] = np.asarray(id_scores[score])
            self.ood_scores.setdefault(score, {})[name] = np.asarray(ood)

    def average(self, score: str) -> dict[str, float]:
        rows = list(self.results[score].values())
        return {m: float(np.mean([r[m] for r in rows])) for m in METRIC_NAMES}

    def to_dict(self) -> dict:
        return {
            "id_accuracy": self.id_accuracy,
            "n_id": self.n_id,
            "scores": {s: {**sets, "average": self.average(s)} for s, sets in self.results.items()},
        }

    def best(self, ood_set: str | None = None) -> dict[str, float]:
        """Per metric, the best value over the scores: of their averages, or on one OOD set."""
        if ood_set is None:
            rows = [self.average(s) for s in self.results]
        else:
            rows = [by_set[ood_set] for by_set in self.results.values() if ood_set in by_set]
        return {m: (min if m in LOWER_IS_BETTER else max)(r[m] for r in rows) for m in METRIC_NAMES}

    def coinciding(self) -> list[tuple[str, str, str]]:
        """Pairs of scores with the same metrics on every OOD set, each with why where it is known."""
        names, out = list(self.results), []
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if self.results[a] == self.results[b]:
                    out.append((a, b, WHY_EQUAL.get(frozenset({a, b}), "they rank every image alike")))
        return out

    def table(self, title: str = "OOD evaluation", *, full: bool = False) -> Table:
        """The average over OOD sets per score, the best of each column in bold green; ``full`` adds every set."""
        sets = sorted({s for r in self.results.values() for s in r})
        table = Table(title=f"{title} (ID accuracy {100 * self.id_accuracy:.2f}%, n_id={self.n_id})")
        for col in ("score", "OOD set", "n", *METRIC_LABELS.values()):
            table.add_column(col, justify="right" if col not in ("score", "OOD set") else "left")
        best = self.best() if self.results else {}
        for score in self.results:
            n_sets = len(self.results[score])
            label = f"average of {n_sets} sets" if n_sets > 1 else "average (1 set)"
            table.add_row(score, label, "", *_marked(self.average(score), best))
        for name in sets if full else []:
            table.add_section()
            best_here = self.best(name)
            for score, by_set in self.results.items():
                if name in by_set:
                    m = by_set[name]
                    table.add_row(score, name, str(int(m["n"])), *_marked(m, best_here))
        if not full and sets:
            table.caption = f"averages over the OOD sets ({', '.join(sets)}); --all adds each set"
        return table

    def notes(self) -> list[str]:
        """One line per pair of scores that coincide, saying why."""
        return [f"{a} = {b} on every OOD set: {why}." for a, b, why in self.coinciding()]

    def write_plots(self, prefix: str | Path) -> list[Path]:
        """Per OOD set, ``PREFIX.roc.SET.png`` (every score's ROC curve) and ``PREFIX.hist.SET.png`` (every score's
        ID and OOD histograms); the set's name made file-safe (``digits:ood`` -> ``digits-ood``)."""
        from ..plots import plot_roc, plot_score_histograms

        prefix, written = Path(prefix), []
        for name in sorted({s for r in self.ood_scores.values() for s in r}):
            scores = [s for s in self.results if name in self.ood_scores.get(s, {})]
            if not scores:
                continue
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")
            curves = {}
            for s in scores:
                fpr, tpr = roc_curve(self.id_scores[s], self.ood_scores[s][name])
                curves[s] = (fpr, tpr, self.results[s][name]["auroc"])
            written.append(plot_roc(curves, f"ROC: ID test vs {name}", f"{prefix}.roc.{safe}.png"))
            ood = {s: self.ood_scores[s][name] for s in scores}
            written.append(
                plot_score_histograms(self.id_scores, ood, f"scores: ID test vs {name}", f"{prefix}.hist.{safe}.png")
            )
        return written


def _marked(m: dict[str, float], best: dict[str, float]) -> list[str]:
    """Metrics in percent, the column's best in bold green."""
    return [
        f"[bold green]{100 * m[k]:.2f}[/bold green]" if m[k] == best[k] else f"{100 * m[k]:.2f}" for k in METRIC_NAMES
    ]


def merge_reports(*reports: EvaluationReport) -> EvaluationReport:
    """One report holding every score of several reports on the same ID set (the first one's accuracy)."""
    merged = EvaluationReport(reports[0].id_accuracy, reports[0].n_id)
    for rep in reports:
        merged.results.update(rep.results)
        merged.id_scores.update(rep.id_scores)
        merged.ood_scores.update(rep.ood_scores)
    return merged
