"""The one score contract: every score is an ``api.Detector``, higher = more ID, and no OOD set is one typed error."""

import numpy as np
import pytest
import torch
from pytorch_ood.detector import EnergyBased
from torch.utils.data import TensorDataset

from oodsynth.data import ImageData
from oodsynth.densities import ClassDensities
from oodsynth.encoding.features import extract_features
from oodsynth.errors import InputError, NoOODSets
from oodsynth.training.api import SCORE_SIGN, Detector, require_ood_sets
from oodsynth.training.classifier import OODClassifier, build_classifier
from oodsynth.training.detectors import Features, FusedDetector, PytorchOODDetector, evaluate_detectors
from oodsynth.training.evaluation import DensityScore, PhiScore, evaluate, evaluate_density, max_class_log_density
from oodsynth.training.metrics import ood_metrics
from oodsynth.training.ood_config import OODTrainConfig
from tests.helpers.toy_banks import toy_bank


@pytest.fixture(scope="module")
def clf() -> OODClassifier:
    config = OODTrainConfig(width=4, image_size=16)
    model, phi = build_classifier(config, n_classes=3)
    return OODClassifier(model.eval(), phi.eval(), ["a", "b", "c"], config, 0, [], True)


def images(n: int, seed: int) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 3, 16, 16, generator=g), torch.arange(n) % 3
    return ImageData(TensorDataset(x, y), ["a", "b", "c"], 16, name=f"rand{seed}")


def features(penultimate: torch.Tensor, logits: torch.Tensor) -> Features:
    return Features(penultimate.float(), logits.float(), torch.arange(len(logits)) % logits.shape[1])


def test_every_score_keeps_the_one_contract(clf):
    fit = ClassDensities("gaussian_diagonal").fit(toy_bank(3, 20, dim=3))
    scores = [
        PytorchOODDetector("energy", clf),
        FusedDetector("energy+knn", clf),
        PhiScore(clf),
        DensityScore(clf.model, fit),  # the plain classifier's output is 3-d, as the fit
    ]
    assert [s.name for s in scores] == ["energy", "energy+knn", "phi", "density"]
    assert all(isinstance(s, Detector) for s in scores)
    assert SCORE_SIGN == "higher = more in-distribution"


def test_pytorch_ood_scores_are_negated_once_to_higher_is_id(clf):
    d = clf.model.head.in_features
    logits = torch.tensor([[8.0, 0.0, 0.0], [0.1, 0.0, 0.0], [-3.0, -3.0, -3.0]])
    feats = features(torch.zeros(3, d), logits)
    energy = PytorchOODDetector("energy", clf)
    got = energy.score(feats)
    # logsumexp(f): 8.0007, 1.1331, -1.9014 for these logits; pytorch-ood's own score is its negation
    np.testing.assert_allclose(got, [8.000670, 1.133069, -1.901388], atol=1e-5)
    np.testing.assert_array_equal(got, -energy.outlier_score(feats))
    np.testing.assert_array_equal(got, -EnergyBased.score(logits).double().numpy())
    # a fitted feature score: train points near two centres; a point on a centre beats one far from both
    g = torch.Generator().manual_seed(0)
    centres = torch.zeros(2, d)
    centres[0, 0], centres[1, 1] = 1.0, 1.0
    train = centres.repeat(20, 1) + 0.01 * torch.randn(40, d, generator=g)
    knn = PytorchOODDetector("knn", clf, k=1).fit(features(train, torch.zeros(40, 3)))
    near, far = knn.score(features(torch.stack([centres[0], 5 * torch.ones(d)]), torch.zeros(2, 3)))
    # minus the distance to the nearest normalised train feature: -0.041 on a centre, -1.265 far from both
    # (sqrt(2 - 2 / sqrt(d)) = 1.283 between a unit centre and the normalised all-ones direction at d = 32)
    assert near > -0.1 and far < -1.2


def test_density_and_phi_scores_are_what_evaluation_reports(clf):
    bank = toy_bank(3, 30, dim=3, spread=0.1)
    fit = ClassDensities("gaussian_diagonal").fit(bank)
    on_class, _ = max_class_log_density(fit, bank.features[:5])
    off_class, _ = max_class_log_density(fit, -bank.features[:5])  # the opposite directions
    assert on_class.min() > off_class.max()  # higher = more ID
    id_data, ood = images(12, 0), images(9, 1)
    density = DensityScore(clf.model, fit).fit()
    feats, _ = extract_features(clf.model, id_data, progress=False)
    np.testing.assert_array_equal(density.score(id_data), max_class_log_density(fit, feats)[0])
    report = evaluate_density(clf.model, fit, id_data, {"rand": ood}, progress=False)
    expected = ood_metrics(density.score(id_data), density.score(ood))
    assert {k: report.results["density"]["rand"][k] for k in expected} == expected
    phi = PhiScore(clf).fit()
    report = evaluate(clf, id_data, {"rand": ood}, progress=False)
    p = phi.score(id_data)
    assert p.shape == (12,) and ((p > 0) & (p < 1)).all()
    expected = ood_metrics(p, phi.score(ood))
    assert {k: report.results["phi"]["rand"][k] for k in expected} == expected


def test_no_ood_set_is_one_typed_error_everywhere(clf):
    id_data = images(6, 0)
    fit = ClassDensities("gaussian_diagonal").fit(toy_bank(3, 20, dim=3))
    empty = ImageData(TensorDataset(torch.zeros(0, 3, 16, 16), torch.zeros(0).long()), ["a", "b", "c"], 16)
    calls = [
        lambda: evaluate_detectors(clf, id_data, id_data, {}, names=["energy"]),
        lambda: evaluate(clf, id_data, {}),
        lambda: evaluate_density(clf.model, fit, id_data, {}),
        lambda: evaluate(clf, id_data, {"empty": empty}),
        lambda: require_ood_sets([]),
        lambda: ood_metrics([1.0, 2.0], []),
    ]
    for call in calls:
        with pytest.raises(NoOODSets) as exc:
            call()
        assert isinstance(exc.value, InputError) and exc.value.field == "ood" and exc.value.exit_code == 2
    assert "'empty' holds no image" in str(NoOODSets("the OOD set 'empty' holds no image"))
    with pytest.raises(ValueError, match="id_scores: no scores"):  # an empty ID side is not an OOD problem
        ood_metrics([], [1.0])
