"""The detector registry against pytorch-ood run the way its documentation runs it: fit(loader), predict(x)."""

import json

import numpy as np
import pytest
import torch
from pytorch_ood import detector as pod
from torch.utils.data import DataLoader, Subset
from typer.testing import CliRunner

from oodsynth.cli import app
from oodsynth.data import ImageData, load_dataset
from oodsynth.errors import InputError
from oodsynth.training.detectors import DETECTORS, build_detector, evaluate_detectors, extract, resolve_names
from oodsynth.training.metrics import ood_metrics
from oodsynth.training.ood import train_ood
from oodsynth.training.ood_config import OODTrainConfig

pytestmark = pytest.mark.slow  # every test uses a trained classifier and fitted detectors


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    train = load_dataset("digits", "train")
    config = OODTrainConfig(width=4, epochs=2, batch_size=32, lr=0.05, image_size=16, beta=0.0, mean=(0.3,) * 3)
    run = tmp_path_factory.mktemp("run")
    clf = train_ood(config, train, run, progress=False, device="cpu")
    test = load_dataset("digits", "test")
    ood = load_dataset("digits", "ood")
    clf.run = run
    return clf, train, test, ood


def reference(name: str, model, **params):
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
        "knn": lambda: pod.KNN(backbone, k=params.get("k", 50)),
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


def test_evaluate_all_reproduces_pytorch_ood_exactly(setup, tmp_path):
    """``evaluate --score all``: every detector's numbers equal pytorch-ood's fit(loader) / predict(x) ones."""
    clf, train, test, ood = setup
    out = tmp_path / "eval.json"
    args = ["evaluate", "--checkpoint", str(clf.run), "--score", "all", "--param", "knn.k=20", "--json", str(out)]
    res = CliRunner().invoke(app, [*args, "--ood", "digits:ood", "--ood", "digits:far-noise"])
    assert res.exit_code == 0, res.output
    scores = json.loads(out.read_text())["scores"]
    assert list(scores) == list(DETECTORS) and len(DETECTORS) >= 20  # no phi: this baseline's phi is untrained
    noise = load_dataset("digits", "far-noise")
    for name in DETECTORS:
        ref = reference(name, clf.model, k=20)
        ref.fit(DataLoader(train.dataset, batch_size=256))
        id_scores = -predict_all(ref, test)
        for set_name, data in (("digits:ood", ood), ("digits:far-noise", noise)):
            expected = ood_metrics(id_scores, -predict_all(ref, data))
            got = scores[name][set_name]
            assert {k: got[k] for k in expected} == expected, (name, set_name)
            assert got["n"] == len(data)
    # a trained model separates the held-out digits better than chance with the standard scores
    for name in ("msp", "energy", "mahalanobis", "knn", "vim"):
        assert scores[name]["digits:ood"]["auroc"] > 0.55, (name, scores[name])
    assert "vra" in res.output and "average" in res.output


def test_evaluate_score_errors_name_the_option(setup):
    clf, *_ = setup
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(clf.run), "--score", "vimm"])
    assert res.exit_code == 2 and "error: score: unknown score 'vimm'" in res.output and "mahalanobis" in res.output
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(clf.run), "--score", "phi"])
    assert res.exit_code == 2 and "error: score: phi" in res.output and "never trained" in res.output
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(clf.run), "--score", "knn", "--param", "knn.kk=3"])
    assert res.exit_code == 2 and "error: params.knn:" in res.output
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(clf.run), "--param", "k=3"])
    assert res.exit_code == 2 and "error: param[0]:" in res.output
    res = runner.invoke(app, ["evaluate", "--score", "all"])
    assert res.exit_code == 2 and "error: score:" in res.output
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(clf.run), "--score", "energy+vimm"])
    assert res.exit_code == 2 and "error: score: 'energy+vimm': unknown detector 'vimm'" in res.output


def test_evaluate_cli_runs_a_fused_score(setup, tmp_path):
    clf, *_ = setup
    out = tmp_path / "fused.json"
    args = ["evaluate", "--checkpoint", str(clf.run), "--score", "energy+knn", "--param", "knn.k=5"]
    res = CliRunner().invoke(app, [*args, "--score", "knn", "--ood", "digits:ood", "--json", str(out)])
    assert res.exit_code == 0, res.output
    scores = json.loads(out.read_text())["scores"]
    fused, knn = scores["energy+knn"]["digits:ood"], scores["knn"]["digits:ood"]
    assert 0.5 < fused["auroc"] <= 1 and fused["auroc"] != knn["auroc"]


def test_evaluate_detectors_matches_the_cli_route(setup):
    """The library call the lab uses gives the same numbers as one ``score`` per detector."""
    clf, train, test, ood = setup
    report = evaluate_detectors(clf, train, test, {"digits:ood": ood}, names=["energy", "react"])
    assert list(report.results) == ["energy", "react"]
    react = build_detector("react", clf).fit(train)
    expected = ood_metrics(react.score(test), react.score(ood))  # higher = more ID, as the report takes them
    assert {k: report.results["react"]["digits:ood"][k] for k in expected} == expected


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
    from oodsynth.training.classifier import FeatureClassifier

    clf, _, test, _ = setup
    feature_model = FeatureClassifier(build_encoder("resnet18", 12, width=4), n_classes=8).eval()
    for model in (clf.model, feature_model):
        feats = extract(model, Subset(test.dataset, range(9)))
        x = torch.stack([test.dataset[i][0] for i in range(9)])
        with torch.no_grad():
            torch.testing.assert_close(feats.logits, model(x))
        assert feats.penultimate.shape[1] == model.head.in_features
    assert build_detector("vim", feature_model).detector.d == 6  # half the 12-d feature


def test_a_fused_detector_sums_its_parts_standardised_on_held_out_id_scores(setup):
    clf, train, test, ood = setup
    fused = build_detector("energy+knn", clf, knn={"k": 1}).fit(train)
    energy, knn = fused.parts
    assert (energy.name, knn.name) == ("energy", "knn") and knn.detector.k == 1
    # k=1 in-sample distances are all zero (each train image is its own neighbour); the scale is cross-fitted
    train_feats = extract(clf, train)
    assert np.allclose(knn.score(train_feats), 0, atol=1e-5)
    (mu_e, sd_e), (mu_k, sd_k) = fused.scale
    # higher = more ID: a held-out k=1 distance, negated, sits below zero
    assert sd_k > 0.01 and mu_k < -0.01 and sd_e > 0.01
    feats = extract(clf, test)
    expected = (energy.score(feats) - mu_e) / sd_e + (knn.score(feats) - mu_k) / sd_k
    np.testing.assert_allclose(fused.score(feats), expected, rtol=1e-9)
    # standardised, the ID test scores sit near 0 and 1 in each part, so the sum is not one part alone
    assert abs(np.mean((knn.score(feats) - mu_k) / sd_k)) < 1.5
    report = evaluate_detectors(
        clf, train, test, {"digits:ood": ood}, names=["energy", "knn", "energy+knn"], params={"knn": {"k": 1}}
    )
    aurocs = {s: report.results[s]["digits:ood"]["auroc"] for s in report.results}
    assert aurocs["energy+knn"] not in (aurocs["energy"], aurocs["knn"]) and 0.5 < aurocs["energy+knn"] <= 1


def test_fused_names_are_checked_part_by_part(setup):
    clf, _, _, _ = setup
    assert resolve_names(["energy+mahalanobis", "energy"]) == ["energy+mahalanobis", "energy"]
    for bad, words in (("energy+nope", "nope"), ("energy+energy", "two or more"), ("energy+odin", "gradients")):
        with pytest.raises(InputError) as exc:
            resolve_names([bad])
        assert exc.value.field == "score" and words in exc.value.message
    with pytest.raises(InputError, match="fitted"):
        build_detector("energy+vim", clf).score(torch.zeros(2, 3, 16, 16))
