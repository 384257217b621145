"""Selection by evidence: an ID-percentile band and a top-2 margin filter, one ``Selection`` for the lab's pools,
train-ood's outlier datasets and its CLI flags."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from oodsynth.decoding.verification import MANIFEST_PREFIX, Selection, Verification, _top2_margin
from oodsynth.errors import InputError

# eight re-encoded images: a blob (0), decoder artefacts (0.5), images near ID (40, 90), the rest in between
PCT = np.array([0.0, 0.5, 2.0, 5.0, 10.0, 10.5, 40.0, 90.0])
MARGIN = np.array([0.01, 0.30, 0.02, 0.50, 0.04, 0.01, 0.03, 0.60])
CLASSES = np.array([0, 0, 0, 0, 1, 1, 1, 1])


def _verification() -> Verification:
    return Verification(PCT.copy(), CLASSES.copy(), np.full(8, 0.5), MARGIN.copy())


def kept(mask: np.ndarray) -> list[int]:
    return np.flatnonzero(mask).tolist()


def test_a_band_keeps_exactly_the_images_inside_it():
    v = _verification()
    assert kept(Selection(2.0, 10.0).passes(v)) == [2, 3, 4]  # both ends inclusive
    assert kept(v.passes(Selection(0.5, 40.0))) == [1, 2, 3, 4, 5, 6]
    # the default is the single threshold of before: nothing below it dropped, a bare number the same
    assert kept(Selection().passes(v)) == kept(v.passes(10.0)) == kept(PCT <= 10) == [0, 1, 2, 3, 4]
    # a minimum of 0 is no lower bound, so a maximum of 0 stays valid
    assert kept(Selection(max_id_percentile=0.0).passes(v)) == [0]
    assert Selection(1.0, 10.0).describe() == "ID percentile in [1, 10]" and Selection().describe() == (
        "ID percentile <= 10"
    )


def test_the_margin_filter_keeps_the_images_ambiguous_between_two_classes():
    v = _verification()
    assert kept(Selection(0.0, 100.0, max_margin=0.05).passes(v)) == [0, 2, 4, 5, 6]
    assert kept(Selection(1.0, 10.0, max_margin=0.05).passes(v)) == [2, 4]  # the band and the margin together
    assert Selection(1.0, 10.0, 0.05).describe() == "ID percentile in [1, 10]; top-2 margin <= 0.05"
    # verified before margins were recorded: NaN, which fails a margin filter and nothing else
    old = Verification(PCT.copy(), CLASSES.copy(), np.full(8, 0.5))
    assert np.isnan(old.margin).all()
    assert kept(old.passes(Selection(1.0, 10.0))) == [2, 3, 4] and not old.passes(Selection(max_margin=2.0)).any()


def test_the_margin_is_the_top1_minus_top2_anchor_cosine():
    cos = torch.tensor([[0.9, 0.1, 0.85], [0.2, 0.7, -0.3], [-0.5, -0.5, -0.9]])
    np.testing.assert_allclose(_top2_margin(cos), [0.05, 0.5, 0.0], atol=1e-6)
    assert np.isnan(_top2_margin(torch.tensor([[0.3]]))).all()  # one class: no second class to be torn towards


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_id_percentile": 10.0, "max_id_percentile": 10.0}, "min_id_percentile"),
        ({"min_id_percentile": 20.0}, "min_id_percentile"),
        ({"min_id_percentile": -1.0}, "min_id_percentile"),
        ({"max_id_percentile": 101.0}, "max_id_percentile"),
        ({"max_margin": 2.5}, "max_margin"),
        ({"max_margin": -0.1}, "max_margin"),
        ({"max_margin": float("nan")}, "max_margin"),
    ],
)
def test_a_bad_selection_names_its_field(kwargs, field):
    with pytest.raises(InputError) as info:
        Selection(**kwargs)
    assert info.value.field == field


def test_the_manifest_carries_the_margin_and_reads_back_as_the_same_verification():
    v = _verification()
    rows = [v.manifest_fields(i) for i in range(len(v))]
    assert rows[1] == {
        f"{MANIFEST_PREFIX}id_percentile": 0.5,
        f"{MANIFEST_PREFIX}id_class": 0.0,
        f"{MANIFEST_PREFIX}max_softmax": 0.5,
        f"{MANIFEST_PREFIX}margin": 0.3,
    }
    back = Verification.from_manifest(rows)
    np.testing.assert_array_equal(back.id_percentile, PCT)
    np.testing.assert_array_equal(back.margin, MARGIN)
    old = Verification.from_manifest([{f"{MANIFEST_PREFIX}id_percentile": 3.0}])
    assert np.isnan(old.margin).all()


def _store(root, margins=MARGIN):
    """A result store with the eight images' verification in their manifest rows (no margin where None)."""
    from tests.helpers.stores import write_verified_images

    rows = []
    for i, pct in enumerate(PCT):
        diag = {"verified_id_percentile": pct, "verified_id_class": 0, "verified_max_softmax": 0.5}
        if margins is not None:
            diag["verified_margin"] = margins[i]
        rows.append(diag)
    return write_verified_images(root, rows, classes=list(CLASSES))


def _ids(ds) -> list[int]:
    return sorted(int(r.image_id.split("-")[1]) for r in ds.records)


def test_train_ood_outliers_from_a_store_manifest_honour_the_band_and_the_margin(tmp_path):
    from oodsynth.training.outlier_dataset import StoredOutliers, outlier_dataset

    root = tmp_path / "store"
    _store(root)
    band = StoredOutliers(root, "dec", max_id_percentile=10.0, min_id_percentile=1.0)
    assert _ids(band) == [2, 3, 4] and band.targets == [0, 0, 1]
    assert band.verification == "3 of 8 images verified at ID percentile in [1, 10]"
    assert _ids(StoredOutliers(root, "dec", max_id_percentile="auto", max_margin=0.05)) == [0, 2, 4]
    assert _ids(StoredOutliers(root, "dec", max_id_percentile=None, min_id_percentile=5.0)) == [3, 4, 5, 6, 7]
    assert _ids(StoredOutliers(root, "dec", max_id_percentile="auto")) == [0, 1, 2, 3, 4]  # unchanged default
    assert len(StoredOutliers(root, "dec")) == 8
    with pytest.raises(InputError) as info:  # a band that keeps nothing names the filter to loosen
        outlier_dataset(root, ["dec"], 16, 10.0, min_id_percentile=0.6, max_margin=0.015)
    assert info.value.field == "max_margin" and "top-2 margin <= 0.015" in info.value.message
    with pytest.raises(InputError) as info:
        StoredOutliers(root, "dec", max_id_percentile=10.0, min_id_percentile=10.0)
    assert info.value.field == "min_id_percentile"
    # images verified before margins were recorded: fine without a margin filter, an error naming it with one
    _store(tmp_path / "old", margins=None)
    assert _ids(StoredOutliers(tmp_path / "old", "dec", max_id_percentile=10.0, min_id_percentile=1.0)) == [2, 3, 4]
    with pytest.raises(InputError, match="8 of 8 images carry no verified_margin") as info:
        StoredOutliers(tmp_path / "old", "dec", max_id_percentile=10.0, max_margin=0.05)
    assert info.value.field == "max_margin"


def test_a_streamed_export_keeps_the_same_band_as_the_held_one(tmp_path):
    from oodsynth.service.export import export_dataset
    from oodsynth.training.outlier_dataset import StoredOutliers, StreamedOutliers

    _store(tmp_path / "store")
    export_dataset("dec", tmp_path / "shards", format="webdataset", store=tmp_path / "store", progress=False)
    band = {"max_id_percentile": 40.0, "min_id_percentile": 1.0, "max_margin": 0.05}
    held = StoredOutliers(None, [str(tmp_path / "shards")], **band)
    streamed = StreamedOutliers([str(tmp_path / "shards")], buffer=4, **band)
    assert _ids(held) == [2, 4, 5, 6]
    assert sorted(np.asarray(img)[0, 0, 0] for img, _ in streamed) == [40, 80, 100, 120]
    assert "ID percentile in [1, 40]; top-2 margin <= 0.05" in streamed.verification


def test_train_ood_cli_band_and_margin_flags(tmp_path):
    from typer.testing import CliRunner

    from oodsynth.cli import app

    _store(tmp_path / "store")
    base = ["train-ood", "--out", str(tmp_path / "run"), "--store", str(tmp_path / "store"), "--outliers", "dec"]
    base += ["--epochs", "1", "--width", "4", "--device", "cpu"]
    runner = CliRunner()
    res = runner.invoke(app, [*base, "--min-id-percentile", "20", "--max-id-percentile", "10"])
    assert res.exit_code == 2 and res.output.startswith("error: min_id_percentile: must lie below"), res.output
    res = runner.invoke(app, [*base, "--min-id-percentile", "0.6", "--max-margin", "0.015"])
    assert res.exit_code == 2 and "error: max_margin: no image" in res.output, res.output
    res = runner.invoke(app, [*base, "--all-outliers", "--max-margin", "0.1"])
    assert res.exit_code == 2 and res.output.startswith("error: all_outliers:"), res.output
    helped = runner.invoke(app, ["train-ood", "--help"], env={"COLUMNS": "200"}).output
    assert "--min-id-percentile" in helped and "--max-margin" in helped


def test_lab_settings_band_and_the_keys_it_changes():
    from oodsynth.lab import LabSettings, lab_rows

    for bad, field in (({"min_id_percentile": 10.0}, "min_id_percentile"), ({"max_margin": 3.0}, "max_margin")):
        with pytest.raises(ValidationError) as info:
            LabSettings(**bad)
        assert InputError.from_pydantic(info.value).field == field
    assert LabSettings(min_id_percentile=20.0, max_id_percentile=30.0).selection == Selection(20.0, 30.0)
    assert LabSettings().selection == Selection()

    rows = lab_rows()
    verified, plain, noise = (
        rows["decoded:boundary_crossing+verified"],
        rows["decoded:boundary_crossing"],
        rows["noise"],
    )

    def key(settings, row):
        return settings.key(row.uses, row.sampler)

    base = LabSettings()
    # the new fields at their defaults are keyed as before they existed: every cached cell keeps its key
    before = base.model_dump(mode="json")
    del before["min_id_percentile"], before["max_margin"], before["init_strength"]  # fields added later
    assert base.key() == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:10]
    changed = [
        LabSettings(min_id_percentile=1.0),
        LabSettings(min_id_percentile=2.0),
        LabSettings(max_margin=0.1),
        LabSettings(max_id_percentile=20.0),
    ]
    verified_keys = {key(s, verified) for s in [base, *changed]}
    assert len(verified_keys) == 5  # every band its own verified cells
    assert {key(s, plain) for s in changed} == {key(base, plain)}  # the unverified row chooses no band
    assert {key(s, noise) for s in changed} == {key(base, noise)}


def test_a_pool_chooses_by_the_selection_and_an_old_cache_gets_its_margins_once(tmp_path, monkeypatch):
    from oodsynth.lab import pools

    state = {
        "images": torch.zeros(8, 3, 4, 4, dtype=torch.uint8),
        "class_index": torch.from_numpy(CLASSES),
        "id_percentile": torch.from_numpy(PCT),
        "id_class": torch.from_numpy(CLASSES),
        "max_softmax": torch.full((8,), 0.5, dtype=torch.float64),
        "sample_seconds": 1.0,
        "decode_seconds": 2.0,
    }
    path = tmp_path / "decoded-old.pt"
    torch.save(state, path)  # a pool cached before margins were recorded
    calls = []

    def reencode(encoder, fit, images):
        calls.append(images.shape)
        return Verification(PCT + 1, CLASSES, np.full(8, 0.9), MARGIN)  # only its margins are taken

    monkeypatch.setattr(pools, "verify_images", reencode)
    assets = SimpleNamespace(encoder=None, fit=None)
    pool = pools._cached_pool(path, assets)
    np.testing.assert_array_equal(pool.verification.id_percentile, PCT)
    np.testing.assert_array_equal(pool.verification.margin, MARGIN)
    again = pools._cached_pool(path, assets)  # saved with its margins: not re-encoded again
    assert calls == [(8, 3, 4, 4)] and np.array_equal(again.verification.margin, MARGIN)

    assert pool.choose(1, Selection(1.0, 50.0)).tolist() == [2, 4]  # per class, the first inside the band
    assert pool.choose(2, Selection(0.0, 100.0, max_margin=0.05)).tolist() == [0, 2, 4, 5]
    assert pool.choose(4, 10.0).tolist() == [0, 1, 2, 3, 4]  # a bare threshold, as before
    assert pool.choose(1, None).tolist() == [0, 4]
