"""OOD-regularised training on the digits profile with outlier images in a real result store."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, Subset
from typer.testing import CliRunner

from oodsynth.cli import app
from oodsynth.data import ImageData, load_dataset
from oodsynth.errors import InputError
from oodsynth.training.classifier import energy, load_ood_classifier
from oodsynth.training.evaluation import evaluate
from oodsynth.training.ood import ood_loss, train_ood
from oodsynth.training.ood_config import OODTrainConfig
from oodsynth.training.outlier_dataset import outlier_dataset
from tests.helpers.stores import write_outliers


class Counting(Dataset):
    """Wraps a dataset and counts how often each index is read."""

    def __init__(self, ds):
        self.ds, self.reads = ds, Counter()

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        self.reads[i] += 1
        return self.ds[i]


def tiny_config(**kw):
    base = dict(
        width=4,
        epochs=1,
        batch_size=32,
        ood_batch_size=10,
        lr=0.05,
        image_size=16,
        beta=2.5,
        mean=(0.3,) * 3,
        std=(0.4,) * 3,
    )
    return OODTrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train")


def test_outliers_are_resized_to_id_resolution(tmp_path, digits):
    write_outliers(tmp_path, "blobs", 2, digits.class_names[:2], size=48)
    ds = outlier_dataset(tmp_path, ["blobs"], 16)
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and y == 0 and len(ds) == 4


@pytest.mark.parametrize("n_id, n_ood, longer", [(64, 100, "ood"), (320, 20, "id")])
def test_neither_set_is_truncated(tmp_path, digits, n_id, n_ood, longer):
    ident = Counting(Subset(digits.dataset, range(n_id)))
    outl = Counting([(torch.rand(3, 16, 16), 0) for _ in range(n_ood)])
    clf = train_ood(
        tiny_config(), ImageData(ident, digits.class_names, 16), tmp_path, outliers=outl, progress=False, device="cpu"
    )
    steps = max(n_id // 32, n_ood // 10)  # batches 32 (ID) and 10 (OOD): the longer loader sets the epoch
    assert sum(ident.reads.values()) == 32 * steps and sum(outl.reads.values()) == 10 * steps
    long_set, short_set = (outl, ident) if longer == "ood" else (ident, outl)
    assert set(long_set.reads.values()) == {1}  # the longer set is read exactly once
    assert set(short_set.reads.values()) == {5}  # the shorter one is cycled (5 passes here), never cut
    assert clf.uses_outliers and np.isfinite(clf.history[-1]["ood"])


def test_ce_only_baseline_and_resume(tmp_path, digits):
    small = ImageData(Subset(digits.dataset, range(96)), digits.class_names, 16)

    class Stop(Exception):
        pass

    def stop(done, total):
        if done == 1:
            raise Stop

    with pytest.raises(Stop):
        train_ood(tiny_config(epochs=2, beta=0.0), small, tmp_path, progress=stop, device="cpu")
    clf = train_ood(tiny_config(epochs=2, beta=0.0), small, tmp_path, resume=True, progress=False, device="cpu")
    assert [h["epoch"] for h in clf.history] == [1, 2]
    assert not clf.uses_outliers and all(h["ood"] == 0 for h in clf.history)
    loaded = load_ood_classifier(tmp_path, device="cpu")
    x = torch.stack([small.dataset[i][0] for i in range(4)])
    with torch.no_grad():
        torch.testing.assert_close(energy(loaded.model(x)), energy(clf.model.cpu()(x)))


@pytest.mark.slow  # trains a detector
def test_train_ood_then_evaluate_gives_finite_metrics(tmp_path, digits):
    store = tmp_path / "store"
    write_outliers(store, "blobs-a", 12, digits.class_names)
    write_outliers(store, "blobs-b", 6, digits.class_names, seed=1)
    run = tmp_path / "run"
    res = CliRunner().invoke(
        app,
        [
            "train-ood",
            "--out",
            str(run),
            "--store",
            str(store),
            "--outliers",
            "blobs-a",
            "--outliers",
            "blobs-b",
            "--width",
            "8",
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--ood-batch-size",
            "16",
            "--lr",
            "0.05",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (
        "CE + 0.5 * L_ood on 2 outlier set(s)" in res.output
        and "outliers: all images: some carry no verification" in res.output
    )
    res = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(run), "--json", str(tmp_path / "eval.json")])
    assert res.exit_code == 0, res.output
    assert "average" in res.output and "digits:ood" in res.output
    result = json.loads((tmp_path / "eval.json").read_text())
    print(json.dumps(result, indent=1))
    assert result["id_accuracy"] > 0.5  # measured ~0.9 after 2 epochs; chance is 0.125
    for score in ("energy", "phi"):
        metrics = result["scores"][score]["digits:ood"]
        assert metrics["n"] == 354  # all images of the held-out digits 8 and 9
        for name in ("fpr95", "auroc", "aupr_in", "aupr_out"):
            assert np.isfinite(metrics[name]) and 0 <= metrics[name] <= 1
        sets = [m for name, m in result["scores"][score].items() if name != "average"]  # near- and far-OOD sets
        assert result["scores"][score]["average"]["auroc"] == pytest.approx(np.mean([m["auroc"] for m in sets]))
    # the pictures beside the JSON: per OOD set a ROC figure and a histogram figure, both PNG
    sets = sorted(name for name in result["scores"]["energy"] if name != "average")
    safe = [name.replace(":", "-") for name in sets]
    assert result["plots"] == [f"eval.{kind}.{name}.png" for name in safe for kind in ("roc", "hist")]
    for name in result["plots"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # asked for no score, evaluate leads with the OOD lab's test score: KNN with k 1, the same as asked by name
    # (the same checkpoint scored twice in one process: equal exactly, checked at 1 and 2 torch threads)
    assert list(result["scores"]) == ["knn", "energy", "phi"]
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--checkpoint",
            str(run),
            "--score",
            "knn",
            "--param",
            "knn.k=1",
            "--json",
            str(tmp_path / "k1.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "k1.json").read_text())["scores"]["knn"] == result["scores"]["knn"]


def test_cli_errors_name_the_option(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "error: checkpoint:" in res.output
    write_outliers(tmp_path / "store", "blobs", 1, ["zero"])
    res = runner.invoke(
        app,
        [
            "train-ood",
            "--out",
            str(tmp_path / "r"),
            "--store",
            str(tmp_path / "store"),
            "--outliers",
            "nope",
            "--epochs",
            "1",
        ],
    )
    assert res.exit_code == 2 and "error: outliers:" in res.output and "blobs" in res.output
    res = runner.invoke(app, ["train-ood", "--out", str(tmp_path / "r"), "--beta", "-1"])
    assert res.exit_code == 2 and "error: beta:" in res.output
    res = runner.invoke(app, ["train-ood", "--out", str(tmp_path / "r"), "--ood-loss", "hinge"])
    assert res.exit_code == 2 and "error: ood_loss:" in res.output and "outlier_exposure" in res.output


class ReadOrder(Dataset):
    """Wraps a dataset and records the order in which its indices are read."""

    def __init__(self, ds):
        self.ds, self.order = ds, []

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        self.order.append(i)
        return self.ds[i]


@pytest.mark.slow  # trains two detectors
def test_fine_tune_starts_from_the_checkpoint_and_pairs_id_batches_with_ce(tmp_path, digits):
    small = Subset(digits.dataset, range(160))
    train_ood(
        tiny_config(epochs=1, beta=0.0, seed=3),
        ImageData(small, digits.class_names, 16),
        tmp_path / "ce",
        progress=False,
        device="cpu",
    )
    start = load_ood_classifier(tmp_path / "ce", device="cpu").model.state_dict()
    outl = [(torch.rand(3, 16, 16), 0) for _ in range(30)]
    runs = {}
    for name, beta, ood in (("ce", 0.0, None), ("outliers", 2.5, outl)):
        ident = ReadOrder(small)
        # width 99 is replaced by the checkpoint's 4; lr 1e-9 keeps the weights where they started
        config = tiny_config(epochs=2, beta=beta, seed=7, width=99, lr=1e-9, init_classifier=str(tmp_path / "ce"))
        clf = train_ood(
            config,
            ImageData(ident, digits.class_names, 16),
            tmp_path / name,
            outliers=ood,
            progress=False,
            device="cpu",
        )
        runs[name] = (ident.order, clf)
    assert len(runs["ce"][0]) == 2 * 160
    assert runs["ce"][0] == runs["outliers"][0]  # the same ID images in the same order: the pair differs by L_ood only
    for _, clf in runs.values():
        assert clf.config.width == 4
        weights = {k: v for k, v in clf.model.state_dict().items() if k.endswith("weight")}
        for k, v in weights.items():
            torch.testing.assert_close(v, start[k], atol=1e-6, rtol=0)
    assert runs["outliers"][1].uses_outliers and not runs["ce"][1].uses_outliers


def test_fine_tune_errors_name_init_classifier(tmp_path, digits):
    small = ImageData(Subset(digits.dataset, range(64)), digits.class_names, 16)
    train_ood(tiny_config(beta=0.0), small, tmp_path / "ce", progress=False, device="cpu")
    cases = [
        (tiny_config(init_classifier=str(tmp_path / "missing")), small, "does not exist"),
        (
            tiny_config(init_classifier=str(tmp_path / "ce")),
            ImageData(small.dataset, [f"c{i}" for i in range(8)], 16),
            "differ from the dataset's",
        ),
        (tiny_config(init_classifier=str(tmp_path / "ce"), image_size=32), small, "trained at image size 16"),
        (tiny_config(init_classifier=str(tmp_path / "ce"), init_encoder=str(tmp_path / "ce")), small, "not both"),
    ]
    for config, data, message in cases:
        with pytest.raises(InputError) as err:
            train_ood(config, data, tmp_path / "run", progress=False, device="cpu")
        assert err.value.field == "init_classifier" and message in err.value.message
    res = CliRunner().invoke(
        app,
        ["train-ood", "--out", str(tmp_path / "r"), "--epochs", "1", "--init-classifier", str(tmp_path / "missing")],
    )
    assert res.exit_code == 2 and "error: init_classifier:" in res.output


# ---------------------------------------------------------------- feature-space outliers


@pytest.fixture(scope="module")
def feature_setup(tmp_path_factory, digits):
    """A 1-epoch text-aligned encoder on 400 digits, its bank and fit, and a stored inverse_sgld sample."""
    from oodsynth.densities import ClassDensities
    from oodsynth.encoding.anchors import random_anchors
    from oodsynth.encoding.features import build_bank
    from oodsynth.encoding.training import EncoderTrainConfig, train_encoder
    from oodsynth.samplers import get_sampler
    from oodsynth.state.samples import StoredSample

    root = tmp_path_factory.mktemp("feature")
    small = ImageData(Subset(digits.dataset, range(400)), digits.class_names, 16, digits.mean, digits.std)
    cfg = EncoderTrainConfig(width=4, epochs=1, batch_size=64, lr=0.05, image_size=16, mean=digits.mean, std=digits.std)
    ckpt = train_encoder(cfg, small, random_anchors(8, 768, seed=0), root / "enc", progress=False, device="cpu")
    bank = build_bank(ckpt, small, progress=False)
    fit = ClassDensities("gaussian_diagonal").fit(bank)
    result = get_sampler("inverse_sgld").sample(fit, 24, seed=0, bank=bank)
    stored = StoredSample.from_result(result, "digits-fit", bank.class_names.tolist())
    stored.save(root / "sample.npz")
    return {"root": root, "small": small, "ckpt": ckpt, "stored": stored, "npz": root / "sample.npz"}


def feature_config(setup, **kw):
    return tiny_config(
        **{
            "init_encoder": str(setup["root"] / "enc"),
            "batch_size": 64,
            "ood_batch_size": 24,
            "lr": 0.01,
            "mean": setup["small"].mean,
            "std": setup["small"].std,
            **kw,
        }
    )


def test_feature_model_starts_as_the_anchor_classifier(feature_setup):
    from oodsynth.training.ood_model import from_encoder

    setup = feature_setup
    _, model, _ = from_encoder(feature_config(setup), setup["small"])
    model.eval()
    x = torch.stack([setup["small"].dataset[i][0] for i in range(8)])
    with torch.no_grad():
        z = setup["ckpt"].model.cpu().embed(x)
        anchors = torch.nn.functional.normalize(torch.from_numpy(setup["ckpt"].anchors), dim=1)
        torch.testing.assert_close(model.features(x), z)
        torch.testing.assert_close(model(x), z @ anchors.T / 0.1)
        torch.testing.assert_close(model.classify(0.38 * z), model(x))  # sampled vectors come at the anchor norm


@pytest.mark.slow  # trains a detector
def test_feature_outliers_train_the_head_and_reload(tmp_path, feature_setup):
    setup = feature_setup
    clf = train_ood(
        feature_config(setup, epochs=4, lr=0.05),
        setup["small"],
        tmp_path,
        feature_outliers=setup["npz"],
        progress=False,
        device="cpu",
    )
    assert clf.uses_outliers and all(np.isfinite(h["ood"]) for h in clf.history)
    assert clf.history[-1]["ood"] < clf.history[0]["ood"]  # measured 0.62 -> 0.30
    vectors = torch.from_numpy(setup["stored"].vectors)
    x = torch.stack([setup["small"].dataset[i][0] for i in range(200)])
    with torch.no_grad():
        p_id_images = torch.sigmoid(clf.phi(energy(clf.model(x)))).mean()
        p_id_outliers = torch.sigmoid(clf.phi(energy(clf.model.classify(vectors)))).mean()
    assert p_id_outliers < p_id_images - 0.1  # phi tells the vectors from ID images (measured 0.8 vs 0.5)
    loaded = load_ood_classifier(tmp_path, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x[:4]), clf.model(x[:4]))


@pytest.mark.slow  # trains a detector
def test_feature_outliers_from_a_sample_id_and_a_bare_npz_with_redraw(tmp_path, feature_setup, redis_url):
    from oodsynth.state.redis_conn import get_redis
    from oodsynth.state.samples import SampleRegistry
    from oodsynth.training.feature_outliers import load_feature_outliers, redraw_feature_outliers
    from oodsynth.training.ood_model import from_encoder

    setup = feature_setup
    sample_id = SampleRegistry(get_redis()).put_stored(setup["stored"])
    run = tmp_path / "run"
    res = CliRunner().invoke(
        app,
        [
            "train-ood",
            "--out",
            str(run),
            "--init-encoder",
            str(setup["root"] / "enc"),
            "--feature-outliers",
            sample_id,
            "--redraw-every",
            "1",
            "--redraw-density",
            "gaussian_diagonal",
            "--width",
            "4",
            "--epochs",
            "2",
            "--batch-size",
            "128",
            "--lr",
            "0.01",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "feature outliers" in res.output and load_ood_classifier(run, device="cpu").uses_outliers

    bare = tmp_path / "bare.npz"  # what a client that saved /sample's JSON (vectors + class_index) would have
    np.savez(bare, vectors=setup["stored"].vectors, class_index=setup["stored"].class_index)
    loaded = load_feature_outliers(bare, n_classes=8)
    assert loaded.method == "" and loaded.vectors.shape == setup["stored"].vectors.shape
    with pytest.raises(ValueError, match="^redraw_every:"):
        train_ood(
            feature_config(setup, redraw_every=1),
            setup["small"],
            tmp_path / "r2",
            feature_outliers=bare,
            progress=False,
            device="cpu",
        )

    _, model, _ = from_encoder(feature_config(setup), setup["small"])
    stored = load_feature_outliers(setup["stored"])
    redrawn = redraw_feature_outliers(model, setup["small"], stored, "gaussian_diagonal", seed=1)
    assert redrawn.method == "inverse_sgld" and redrawn.vectors.shape == stored.vectors.shape
    np.testing.assert_array_equal(redrawn.class_index, stored.class_index)


def test_feature_outlier_errors_name_the_field(tmp_path, feature_setup):
    setup = feature_setup
    with pytest.raises(ValueError, match="^init_encoder:"):
        train_ood(tiny_config(), setup["small"], tmp_path, feature_outliers=setup["stored"], progress=False)
    wrong_dim = tmp_path / "wrong.npz"
    np.savez(wrong_dim, vectors=np.ones((4, 12), np.float32), class_index=np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="^feature_outliers: vectors have dim 12"):
        train_ood(feature_config(setup), setup["small"], tmp_path, feature_outliers=wrong_dim, progress=False)
    np.savez(tmp_path / "other.npz", features=np.ones((4, 768), np.float32))
    res = CliRunner().invoke(
        app,
        [
            "train-ood",
            "--out",
            str(tmp_path / "r"),
            "--init-encoder",
            str(setup["root"] / "enc"),
            "--feature-outliers",
            str(tmp_path / "other.npz"),
        ],
    )
    assert res.exit_code == 2 and "error: feature_outliers:" in res.output and "class_index" in res.output
    res = CliRunner().invoke(
        app,
        [
            "train-ood",
            "--out",
            str(tmp_path / "r"),
            "--init-encoder",
            str(tmp_path / "none"),
            "--feature-outliers",
            str(setup["npz"]),
        ],
    )
    assert res.exit_code == 2 and "error: init_encoder:" in res.output


@pytest.mark.slow  # trains a detector
def test_outlier_exposure_loss_flattens_the_outliers_softmax(tmp_path, digits):
    """OE's L_ood is the cross-entropy to uniform: log K at uniform logits, and training with it pulls the
    outliers' max softmax far below a CE-only twin's; phi stays untrained, so evaluate scores energy only."""
    flat = torch.zeros(5, 8)
    flat[:2] = torch.randn(2, 8)  # the 2 ID rows do not count
    assert ood_loss("outlier_exposure", flat, 2, None).item() == pytest.approx(np.log(8))
    peaked = torch.cat([torch.zeros(2, 8), torch.eye(8)[:3] * 10])
    assert ood_loss("outlier_exposure", peaked, 2, None).item() > 4 * np.log(8)
    small = ImageData(Subset(digits.dataset, range(320)), digits.class_names, 16)
    blobs = [(torch.rand(3, 4, 4).repeat_interleave(4, 1).repeat_interleave(4, 2) * 2 - 1, 0) for _ in range(40)]
    x_blobs = torch.stack([b[0] for b in blobs])
    msp = {}
    for name, beta in (("ce", 0.0), ("oe", 1.0)):
        clf = train_ood(
            tiny_config(epochs=3, beta=beta, ood_loss="outlier_exposure"),
            small,
            tmp_path / name,
            outliers=blobs,
            progress=False,
            device="cpu",
        )
        with torch.no_grad():
            msp[name] = clf.model(x_blobs).softmax(1).max(1).values.mean().item()
    print(msp)
    assert msp["oe"] < 0.5 * msp["ce"] and msp["oe"] < 0.3  # uniform over 8 classes is 0.125
    assert load_ood_classifier(tmp_path / "oe", device="cpu").config.ood_loss == "outlier_exposure"
    report = evaluate(
        clf,
        ImageData(Subset(digits.dataset, range(64)), digits.class_names, 16),
        {"blobs": ImageData(blobs, digits.class_names, 16)},
        progress=False,
    )
    assert set(report.results) == {"energy"}


@pytest.mark.slow
def test_virtual_outliers_start_after_the_warmup_and_npos_learns_its_outliers(tmp_path, digits):
    """Same seed, CE only against each in-training sampler: L_ood runs from the warm-up epoch on; NPOS moves the
    energy of its own outliers (drawn afresh from the trained features) away from the ID features'."""
    from oodsynth.training.classifier import head_of, penultimate
    from oodsynth.training.virtual_outliers import FeatureQueue, get_virtual_sampler

    small = ImageData(Subset(digits.dataset, range(320)), digits.class_names, 16)
    x = torch.stack([small.dataset[i][0] for i in range(320)])
    y = torch.tensor([small.dataset[i][1] for i in range(320)])
    params = {
        "vos": {"warmup": 0.16, "queue_size": 28},
        "npos": {"warmup": 0.16, "queue_size": 28, "k": 5, "select": 10},
    }

    def energy_gap(clf, method):
        """Mean energy of fresh virtual outliers minus that of the ID features, in eval mode."""
        with torch.no_grad():
            f = penultimate(clf.model.eval(), x)
            queue = FeatureQueue(10, 28, f.shape[1])
            queue.push(f, y)
            v, _ = get_virtual_sampler(method, params[method]).sample(queue, 200, torch.Generator().manual_seed(0))
            head = head_of(clf.model)
            return (energy(head(v)).mean() - energy(head(f)).mean()).item()

    config = dict(epochs=6, ood_batch_size=32, beta=1.0, seed=2)
    ce = train_ood(tiny_config(**config), small, tmp_path / "ce", device="cpu", progress=False)
    gaps, losses = {}, {}
    for method in ("vos", "npos"):
        clf = train_ood(
            tiny_config(**config, virtual_outliers=method, virtual_params=params[method]),
            small,
            tmp_path / method,
            device="cpu",
            progress=False,
        )
        ood = [h["ood"] for h in clf.history]
        assert ood[0] == 0.0 and all(v > 0.1 for v in ood[1:]), (method, ood)  # from epoch 2 of 6
        assert clf.uses_outliers and not ce.uses_outliers
        gaps[method] = (energy_gap(ce, method), energy_gap(clf, method))
        losses[method] = ood
    # NPOS's L_ood falls as the head learns its outliers (measured 0.68 -> 0.56), and its fresh outliers sit higher
    # in energy above the ID features than under CE alone (measured 3.05 -> 3.15). VOS's outliers stay as ID-like
    # as the ID features themselves here (L_ood stays at ln 2: measured, not asserted; see the lab's vos row).
    assert losses["npos"][-1] < losses["npos"][1] - 0.05, losses
    assert gaps["npos"][1] > gaps["npos"][0] + 0.05, gaps
