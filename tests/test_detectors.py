"""The detector registry against pytorch-ood run the way its documentation runs it: fit(loader), predict(x)."""

import numpy as np
import pytest
import torch
from pytorch_ood import detector as pod
from torch.utils.data import DataLoader, Subset

from oodsynth.data import ImageData, load_dataset
from oodsynth.errors import InputError
from oodsynth.training.detectors import DETECTORS, build_detector, evaluate_detectors, extract, resolve_names
from oodsynth.training.metrics import ood_metrics
from oodsynth.training.ood import OODTrainConfig, train_ood


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    train = load_dataset("digits", "train")
    config = OODTrainConfig(width=4, epochs=2, batch_size=32, lr=0.05, image_size=16, beta=0.0, mean=(0.3,) * 3)
    clf = train_ood(config, train, tmp_path_factory.mktemp("run"), progress=False, device="cpu")
    test = load_dataset("digits", "test")
    ood = load_dataset("digits", "ood")
    return clf, train, test, ood


def reference(name: str, model):
    """pytorch-ood's own detector on the whole model, built from its documented constructor arguments."""
    backbone = lambda x: model.backbone((x - model.mean) / model.std)  # noqa: E731
    head = model.head
    maps = lambda x: backbone(x)[:, :, None, None]  # noqa: E731
    maps_head = lambda m: head(m.flatten(1))  # noqa: E731
    w, b = head.weight.detach(), head.bias.detach()
    return {
        "msp": lambda: pod.MaxSoftmax(model),
        "maxlogit": lambda: pod.MaxLogit(model),
        "energy": lambda: pod.EnergyBased(model),
        "entropy": lambda: pod.Entropy(model),
        "gen": lambda: pod.GEN(model),
        "klmatching": lambda: pod.KLMatching(model),
        "odin": lambda: pod.ODIN(model, norm_std=[0.5, 0.5, 0.5]),
        "mahalanobis": lambda: pod.Mahalanobis(backbone),
        "rmd": lambda: pod.RMD(backbone),
        "knn": lambda: pod.KNN(backbone, k=50),
        "vim": lambda: pod.ViM(backbone, d=w.shape[1] // 2, w=w, b=b),
        "dice": lambda: pod.DICE(backbone, w=w, b=b, p=0.7),
        "she": lambda: pod.SHE(backbone, head),
        "fdbd": lambda: pod.fDBD(backbone, head),
        "nci": lambda: pod.NCI(backbone, head),
        "nnguide": lambda: pod.NNGuide(backbone, head, k=10),
        "lts": lambda: pod.LTS(backbone, head),
        "react": lambda: pod.ReAct(maps, maps_head, percentile=0.9),
        "ash": lambda: pod.ASH(maps, maps_head, percentile=0.65),
        "scale": lambda: pod.SCALE(maps, maps_head, percentile=0.65),
        "vra": lambda: pod.VRA(maps, maps_head),
    }[name]()


def predict_all(det, data: ImageData) -> np.ndarray:
    out = []
    for x, _ in DataLoader(data.dataset, batch_size=256):
        if isinstance(det, pod.ODIN):
            out.append(det.predict(x).detach().numpy())
        else:
            with torch.no_grad():
                out.append(det.predict(x).detach().double().numpy())
    return np.concatenate(out)


def test_every_detector_reproduces_pytorch_ood_exactly(setup):
    clf, train, test, ood = setup
    model = clf.model
    report = evaluate_detectors(clf, train, test, {"digits:ood": ood}, names=["all"])
    assert list(report.results) == list(DETECTORS) and len(DETECTORS) >= 20
    for name in DETECTORS:
        ref = reference(name, model)
        ref.fit(DataLoader(train.dataset, batch_size=256))
        expected = ood_metrics(-predict_all(ref, test), -predict_all(ref, ood))
        got = report.results[name]["digits:ood"]
        assert {k: got[k] for k in expected} == expected, name
        assert got["n"] == len(ood)
    # a trained model separates the held-out digits better than chance with the standard scores
    for name in ("msp", "energy", "mahalanobis", "knn", "vim"):
        assert report.results[name]["digits:ood"]["auroc"] > 0.55, (name, report.results[name])


def test_score_accepts_images_datasets_and_features(setup):
    clf, train, test, _ = setup
    det = build_detector("knn", clf, k=5).fit(Subset(train.dataset, range(200)))
    x = torch.stack([test.dataset[i][0] for i in range(7)])
    from_images = det.score(x)
    from_dataset = det.score(Subset(test.dataset, range(7)))
    from_features = det.score(extract(clf, Subset(test.dataset, range(7))))
    assert from_images.shape == (7,) and from_images.dtype == np.float64
    np.testing.assert_allclose(from_images, from_dataset, rtol=1e-6)
    np.testing.assert_array_equal(from_dataset, from_features)


def test_errors_name_the_field(setup):
    clf, train, _, _ = setup
    with pytest.raises(InputError) as exc:
        resolve_names(["energy", "nope"])
    assert exc.value.field == "score" and "nope" in exc.value.message
    with pytest.raises(InputError) as exc:
        build_detector("knn", clf, kay=3)
    assert exc.value.field == "params.knn"
    with pytest.raises(InputError) as exc:  # k above the number of train images
        build_detector("knn", clf, k=500).fit(Subset(train.dataset, range(100)))
    assert exc.value.field == "score" and "knn" in exc.value.message
    with pytest.raises(InputError, match="fitted"):
        build_detector("vim", clf).score(torch.zeros(2, 3, 16, 16))
    assert resolve_names(["energy", "all"])[:2] == ["energy", "msp"]


def test_parts_split_both_model_kinds_at_the_final_layer(setup):
    from oodsynth.encoding.encoder import build_encoder
    from oodsynth.training.ood import FeatureClassifier

    clf, _, test, _ = setup
    feature_model = FeatureClassifier(build_encoder("resnet18", 12, width=4), n_classes=8).eval()
    for model in (clf.model, feature_model):
        feats = extract(model, Subset(test.dataset, range(9)))
        x = torch.stack([test.dataset[i][0] for i in range(9)])
        with torch.no_grad():
            torch.testing.assert_close(feats.logits, model(x))
        assert feats.penultimate.shape[1] == model.head.in_features
    assert build_detector("vim", feature_model).detector.d == 6  # half the 12-d feature
