"""OOD metrics checked against two independent implementations on the same scores."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from oodsynth.training.metrics import accuracy, auroc, fpr_at_tpr, ood_metrics


def _scores(seed: int, n_id: int = 700, n_ood: int = 400, ties: bool = False):
    rng = np.random.default_rng(seed)
    id_s, ood_s = rng.normal(1.0, 1.0, n_id), rng.normal(0.0, 1.2, n_ood)
    if ties:  # coarse scores: many ties across the two sets
        id_s, ood_s = np.round(id_s, 1), np.round(ood_s, 1)
    return id_s, ood_s


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_scikit_learn(seed, ties):
    id_s, ood_s = _scores(seed, ties=ties)
    y = np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))]
    s = np.r_[id_s, ood_s]
    m = ood_metrics(id_s, ood_s)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["aupr_in"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["aupr_out"] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert m["fpr95"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)
    assert 0.5 < m["auroc"] < 0.9 and 0 < m["fpr95"] < 1


@pytest.mark.parametrize("ties", [False, True])
def test_matches_pytorch_ood(ties):
    from pytorch_ood.metrics import OODMetrics

    id_s, ood_s = _scores(3, n_id=3000, n_ood=2000, ties=ties)
    # pytorch-ood: its positive class has labels < 0 and higher scores; ours is ID with higher scores,
    # so give ID the negative label to ask it for exactly our FPR95 / AUROC / AUPR-in.
    scores = torch.tensor(np.r_[id_s, ood_s])
    labels = torch.tensor(np.r_[-np.ones(len(id_s)), np.zeros(len(ood_s))]).long()
    ref = OODMetrics().update(scores, labels).compute()
    m = ood_metrics(id_s, ood_s)
    assert m["auroc"] == pytest.approx(ref["AUROC"], abs=1e-9)
    assert m["fpr95"] == pytest.approx(ref["FPR95TPR"], abs=1e-9)
    # pytorch-ood integrates the PR curve with trapezoids, we (like scikit-learn) take average
    # precision: close, not equal (the exact AP check is against scikit-learn above)
    assert m["aupr_in"] == pytest.approx(ref["AUPR-OUT"], abs=1e-2)
    assert m["aupr_out"] == pytest.approx(ref["AUPR-IN"], abs=1e-2)


def test_known_values():
    assert fpr_at_tpr([3, 4, 5, 6], [0, 1, 2]) == 0.0
    assert auroc([3, 4, 5, 6], [0, 1, 2]) == 1.0
    assert auroc([1, 1], [1, 1]) == 0.5  # all ties count one half
    # 20 ID scores 1..20; TPR 95% needs threshold 2 -> OOD scores >= 2 are accepted: 3 of 4
    assert fpr_at_tpr(np.arange(1, 21), [0.5, 2, 10, 30]) == 0.75
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75


def test_bad_input_names_field():
    with pytest.raises(ValueError, match="ood_scores"):
        ood_metrics([1, 2], [np.nan, 1])
    with pytest.raises(ValueError, match="id_scores"):
        ood_metrics([], [1])
    with pytest.raises(ValueError, match="predictions"):
        accuracy([1, 2], [1])
