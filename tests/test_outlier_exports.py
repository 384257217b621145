"""train-ood on an export (folder or S3 shards, no store, no Redis) repeats train-ood on the store, seed for seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from oodsynth.data import load_dataset
from oodsynth.errors import InputError
from oodsynth.service.export import export_dataset
from oodsynth.service.training import train_ood_run
from oodsynth.store.results import ImageRecord, ResultStore
from oodsynth.training.detectors import evaluate_detectors
from oodsynth.training.outlier_dataset import StoredOutliers
from tests.test_s3_store import bucket_url, s3_endpoint  # noqa: F401  (the moto server fixtures)

pytestmark = pytest.mark.slow  # trains six small detectors

TINY = dict(width=8, epochs=2, batch_size=32, ood_batch_size=16, lr=0.05, device="cpu", progress=False)


def write_verified(root, class_names, per_class=12, seed=0):
    """Blobs with a re-encoded ID percentile each (some above the default threshold of 10)."""
    rng = np.random.default_rng(seed)
    store = ResultStore(root)
    for c, name in enumerate(class_names):
        for i in range(per_class):
            img = Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8)).resize((40, 40), Image.BILINEAR)
            record = ImageRecord(
                image_id=f"{c}-{i}",
                class_index=c,
                class_name=name,
                vector_id=f"s:{c}-{i}",
                sampler="boundary_crossing",
                seed=i,
                model="blobs",
                prompt="p",
                diagnostics={"verified_id_percentile": float(rng.uniform(0, 14)), "knn_distance": None},
                job_id=f"job-{i % 3}",
            )
            assert store.write_image("blobs", record, img)


def fpr95(checkpoint_model, train, test, ood) -> float:
    report = evaluate_detectors(checkpoint_model, train, test, {"digits:ood": ood}, names=["energy"])
    return report.results["energy"]["digits:ood"]["fpr95"]


def test_exports_train_the_same_detector_as_the_store(tmp_path, bucket_url):  # noqa: F811
    train = load_dataset("digits", "train")
    test, ood = load_dataset("digits", "test"), load_dataset("digits", "ood")
    store = tmp_path / "store"
    write_verified(store, train.class_names)
    folder = tmp_path / "exported"
    export_dataset("blobs", folder, store=store, progress=False)
    shards = f"{bucket_url}/published"
    export_dataset("blobs", shards, format="webdataset", shard_size=7, store=store, progress=False)
    sources = {"store": "blobs", "imagefolder": str(folder), "webdataset on s3": shards}
    datasets = {k: StoredOutliers(store, [v], max_id_percentile="auto") for k, v in sources.items()}
    assert len({d.verification for d in datasets.values()}) == 1 and 0 < len(datasets["store"]) < 96
    assert all(
        [r.image_id for r in d.records] == [r.image_id for r in datasets["store"].records] for d in datasets.values()
    )
    gaps = []
    for seed in (0, 2):
        results, weights = {}, {}
        for kind, source in sources.items():
            run = train_ood_run(
                tmp_path / f"{kind}-{seed}",
                store=store if kind == "store" else tmp_path / "no-store",
                outliers=[source],
                seed=seed,
                **TINY,
            )
            assert run.classifier.uses_outliers and "verified at ID percentile <= 10" in run.classifier.outlier_note
            results[kind] = fpr95(run.classifier, train, test, ood)
            weights[kind] = run.classifier.model.state_dict()
        print(f"seed {seed}: FPR95 {results}")
        gaps += [abs(v - results["store"]) for v in results.values()]
        for kind, state in weights.items():  # the same detector, not only the same number
            assert all(torch.equal(state[k], weights["store"][k]) for k in state), kind
    assert max(gaps) <= 0.001  # 0.1 points of FPR95


def test_bad_export_sources_name_outliers(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as exc:
        StoredOutliers(None, [str(tmp_path / "empty")])
    assert exc.value.field == "outliers" and "neither an imagefolder export" in exc.value.message
    with pytest.raises(InputError) as exc:
        train_ood_run(tmp_path / "r", outliers=[str(tmp_path / "missing") + "/"], **TINY)
    assert exc.value.field == "outliers"
    (tmp_path / "bad.tar").write_bytes(b"not a tar")
    with pytest.raises(InputError) as exc:
        StoredOutliers(None, [str(tmp_path / "bad.tar")])
    assert exc.value.field == "outliers"
