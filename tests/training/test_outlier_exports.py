"""train-ood on an export (folder or S3 shards, no store, no Redis) repeats train-ood on the store, seed for seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from oodsynth.cli import app
from oodsynth.data import load_dataset
from oodsynth.errors import InputError
from oodsynth.service.export import export_dataset
from oodsynth.service.training import train_ood_run
from oodsynth.store.results import ImageRecord, ResultStore
from oodsynth.training.detectors import evaluate_detectors
from oodsynth.training.outlier_dataset import StoredOutliers, StreamedOutliers

pytestmark = pytest.mark.slow  # trains eight small detectors

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


def test_exports_train_the_same_detector_as_the_store(tmp_path, bucket_url):
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


def test_a_streamed_export_yields_the_held_set_in_a_buffer_order_and_trains(tmp_path):
    train = load_dataset("digits", "train")
    store, folder = tmp_path / "store", tmp_path / "shards"
    write_verified(store, train.class_names)
    export_dataset("blobs", folder, format="webdataset", shard_size=7, store=store, progress=False)
    held = StoredOutliers(None, [str(folder)], max_id_percentile=10)
    streamed = StreamedOutliers([str(folder)], max_id_percentile=10, buffer=8, seed=0)
    assert 0 < len(held) < 96 and "streamed from 14 shard(s)" in streamed.verification

    def pixels(images):
        return [(np.asarray(img).tobytes(), c) for img, c in images]

    in_memory = pixels(held[i] for i in range(len(held)))
    first, second = pixels(streamed), pixels(streamed)
    assert sorted(first) == sorted(in_memory) == sorted(second)  # the same kept images, each once a pass
    assert first != in_memory and first != second  # the buffer's order, reshuffled each pass
    loader = DataLoader(streamed, batch_size=None, num_workers=2)  # the workers split the shards between them
    by_workers = [pixels(loader) for _ in range(2)]
    assert all(sorted(p) == sorted(in_memory) for p in by_workers) and by_workers[0] != by_workers[1]

    runs = {}
    for stream in (True, False):
        runs[stream] = train_ood_run(
            tmp_path / f"run-{stream}",
            outliers=[str(folder)],
            max_id_percentile=10,
            stream_outliers=stream,
            shuffle_buffer=16,
            **TINY,
        ).classifier
    clf = runs[True]
    assert clf.uses_outliers and clf.config.stream_outliers and "streamed from 14 shard(s)" in clf.outlier_note
    assert len(clf.history) == 2 and all(0 < h["ood"] < 10 for h in clf.history)
    state, held_state = clf.model.state_dict(), runs[False].model.state_dict()
    assert not all(torch.equal(state[k], held_state[k]) for k in state)  # documented: not seed for seed


def test_streaming_refuses_what_it_cannot_stream(tmp_path):
    store = tmp_path / "store"
    write_verified(store, [str(i) for i in range(10)], per_class=2)
    export_dataset("blobs", tmp_path / "folder", store=store, progress=False)
    export_dataset("blobs", tmp_path / "shards", format="webdataset", store=store, progress=False)
    runner = CliRunner()
    for source in ("blobs", str(tmp_path / "folder")):  # a store dataset, an imagefolder export
        args = ["train-ood", "--out", str(tmp_path / "r"), "--store", str(store), "--outliers", source, "--stream"]
        res = runner.invoke(app, [*args, "--epochs", "1", "--device", "cpu"])
        lines = res.output.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: stream: "), res.output
    with pytest.raises(InputError) as exc:  # no image at or below ID percentile 0: an error, not an endless wait
        train_ood_run(
            tmp_path / "r", outliers=[str(tmp_path / "shards")], max_id_percentile=0.0, stream_outliers=True, **TINY
        )
    assert exc.value.field == "outliers" and "no images" in exc.value.message
