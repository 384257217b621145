"""``--format openood``: an image list OpenOOD's ``ImglistDataset`` reads, and the card of the other formats."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from oodsynth.cli import app
from oodsynth.errors import InputError
from oodsynth.export.openood import OpenOODExporter
from oodsynth.service.export import export_dataset
from tests.helpers.stores import CLASSES, make_store


def read_imglist(imglist_pth: str, data_dir: str) -> list[tuple[str, int]]:
    """OpenOOD's ImglistDataset.getitem, line by line: split at the first space, join to data_dir, int label."""
    out = []
    with open(imglist_pth) as imgfile:
        for line in imgfile.readlines():
            image_name, extra_str = line.strip("\n").split(" ", 1)
            assert not image_name.startswith("/")
            out.append((os.path.join(data_dir, image_name), int(extra_str)))
    return out


@pytest.mark.parametrize("label", ["ood", "class"])
def test_openood_imglist_reads_back(tmp_path, label):
    store = make_store(tmp_path / "store")
    stored = {r.image_id: r for r in store.records("blobs")}
    out = tmp_path / "openood"
    res = export_dataset("blobs", out, format="openood", openood_label=label, store=tmp_path / "store", progress=False)
    assert res.n_images == 12 and res.files[-3:] == ["imglist.txt", "manifest.jsonl", "README.md"]
    items = read_imglist(str(out / "imglist.txt"), str(out) + "/")
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(items) == len(rows) == 12
    for (path, got), row in zip(items, rows):
        record = stored[row["image_id"]]
        assert got == (-1 if label == "ood" else record.class_index)
        assert path.endswith(f"images/{record.class_name}/{record.image_id}.png")
        original = np.asarray(store.open_image(record.path).convert("RGB"))
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), original)
    assert "imglist_pth: <this folder>/imglist.txt" in (out / "README.md").read_text()


def test_openood_folders_hold_no_space(tmp_path):
    from oodsynth.store.results import ImageRecord, ResultStore

    store = ResultStore(tmp_path / "store")
    record = ImageRecord(
        image_id="a", class_index=0, class_name="sea lion", vector_id="v", sampler="s", seed=0, model="m", prompt="p"
    )
    store.write_image("d", record, Image.new("RGB", (8, 8)))
    export_dataset("d", tmp_path / "o", format="openood", store=tmp_path / "store", progress=False)
    assert (tmp_path / "o" / "imglist.txt").read_text() == "images/sea_lion/a.png -1\n"


def test_openood_label_is_checked(tmp_path):
    make_store(tmp_path / "store")
    with pytest.raises(InputError) as exc:
        export_dataset("blobs", tmp_path / "a", format="openood", openood_label="x", store=tmp_path / "store")
    assert exc.value.field == "openood_label" and "choose from ood, class" in exc.value.message
    with pytest.raises(InputError) as exc:
        OpenOODExporter(tmp_path / "a2", label="x")
    assert exc.value.field == "label"
    res = CliRunner().invoke(
        app, ["export", "blobs", str(tmp_path / "b"), "--store", str(tmp_path / "store"), "--openood-label", "class"]
    )
    assert res.exit_code == 2 and "error: openood_label: only the openood format" in res.output
    res = CliRunner().invoke(
        app, ["export", "blobs", str(tmp_path / "c"), "--store", str(tmp_path / "store"), "--format", "openood"]
    )
    assert res.exit_code == 0 and "12 images of 3 classes as openood" in res.output, res.output


def test_webdataset_card_loads_with_datasets(tmp_path):
    """The webdataset card's configs and features: ``load_dataset(OUT)`` gives ``cls`` as a ClassLabel."""
    import datasets
    from huggingface_hub import DatasetCard

    store = make_store(tmp_path / "store")
    export_dataset("blobs", tmp_path / "w", format="webdataset", shard_size=5, store=tmp_path / "store", progress=False)
    rows = datasets.load_dataset(str(tmp_path / "w"), cache_dir=str(tmp_path / "hf"))["train"]
    assert rows.features["cls"] == datasets.ClassLabel(names=list(CLASSES)) and len(rows) == 12
    assert rows.features["json"]["diagnostics"]["id_percentile"].dtype == "float64"
    stored = {r.image_id: r for r in store.records("blobs")}
    assert all(stored[j["image_id"]].class_index == c for j, c in zip(rows["json"], rows["cls"]))
    data = DatasetCard.load(tmp_path / "w" / "README.md").data
    assert data.configs == [{"config_name": "default", "data_files": [{"split": "train", "path": "*.tar"}]}]


def test_a_missing_export_library_is_named_before_anything_is_written(tmp_path, monkeypatch):
    from oodsynth.errors import Unavailable

    make_store(tmp_path / "store")
    monkeypatch.setitem(sys.modules, "webdataset", None)  # what an install without the export extra looks like
    with pytest.raises(Unavailable) as exc:
        export_dataset("blobs", tmp_path / "w", format="webdataset", store=tmp_path / "store", progress=False)
    assert exc.value.field == "format" and "oodsynth[export]" in exc.value.message and "webdataset" in exc.value.message
    assert not (tmp_path / "w").exists()
