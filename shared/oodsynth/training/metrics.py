"""OOD detection metrics with ID as the positive class and scores where higher means "more ID" (``api.SCORE_SIGN``).

Conventions (as in the energy-score / DREAM-OOD papers):

- FPR@95TPR: the fraction of OOD samples accepted as ID at the highest
  threshold that accepts at least 95% of the ID samples.
- AUROC: P(ID score > OOD score), ties counting one half.
- AUPR-in: average precision with ID positive (scores as given);
  AUPR-out: average precision with OOD positive (scores negated).

Hand-rolled on one sort in numpy (rather than three scikit-learn calls) so
ties, the threshold rule and the sign conventions are explicit in one
place; tests check every number against scikit-learn and pytorch-ood.
"""

from __future__ import annotations

import numpy as np

from ..errors import NoOODSets


def _check(name: str, scores) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0 and name == "ood_scores":
        raise NoOODSets("an OOD set holds no image: no ood_scores")
    if s.size == 0:
        raise ValueError(f"{name}: no scores")
    if not np.isfinite(s).all():
        raise ValueError(f"{name}: {int((~np.isfinite(s)).sum())} scores are NaN or infinite")
    return s


def _curve(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true/false positive counts at each distinct threshold, highest first."""
    scores = np.concatenate([pos, neg])
    is_pos = np.concatenate([np.ones(len(pos), bool), np.zeros(len(neg), bool)])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_pos = scores[order], is_pos[order]
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]
    tps = np.cumsum(is_pos)[last_of_tie]
    fps = np.cumsum(~is_pos)[last_of_tie]
    return tps, fps


def _average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
    tps, fps = _curve(pos, neg)
    precision = tps / (tps + fps)
    recall_gain = np.diff(np.r_[0, tps]) / len(pos)
    return float(np.sum(recall_gain * precision))


def fpr_at_tpr(id_scores, ood_scores, tpr: float = 0.95) -> float:
    """FPR (OOD accepted) at the first threshold where TPR (ID accepted) reaches ``tpr``."""
    pos, neg = _check("id_scores", id_scores), _check("ood_scores", ood_scores)
    tps, fps = _curve(pos, neg)
    k = int(np.searchsorted(tps / len(pos), tpr - 1e-12, side="left"))
    return float(fps[k] / len(neg))


def roc_curve(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold, highest first, from (0, 0) to (1, 1): the curve ``auroc`` integrates."""
    pos, neg = _check("id_scores", id_scores), _check("ood_scores", ood_scores)
    tps, fps = _curve(pos, neg)
    return np.r_[0, fps] / len(neg), np.r_[0, tps] / len(pos)


def auroc(id_scores, ood_scores) -> float:
    fpr, tpr = roc_curve(id_scores, ood_scores)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def ood_metrics(id_scores, ood_scores) -> dict[str, float]:
    """``fpr95``, ``auroc``, ``aupr_in``, ``aupr_out`` (fractions in [0, 1]) for one OOD set."""
    pos, neg = _check("id_scores", id_scores), _check("ood_scores", ood_scores)
    return {
        "fpr95": fpr_at_tpr(pos, neg),
        "auroc": auroc(pos, neg),
        "aupr_in": _average_precision(pos, neg),
        "aupr_out": _average_precision(-neg, -pos),
    }


def accuracy(predictions, labels) -> float:
    p, y = np.asarray(predictions).ravel(), np.asarray(labels).ravel()
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"predictions: expected a non-empty array shaped like labels {y.shape}, got {p.shape}")
    return float(np.mean(p == y))
