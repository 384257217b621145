"""``oodsynth export``: the real ``datasets``, torchvision and ``webdataset`` read what it writes, locally and on S3."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from oodsynth.cli import app
from oodsynth.errors import InputError
from oodsynth.service.export import export_dataset
from oodsynth.store.results import ImageRecord, ResultStore
from tests.helpers.stores import CLASSES, make_store


def manifest(store: ResultStore, dataset: str = "blobs") -> dict[str, dict]:
    return {r.image_id: r.model_dump() for r in store.records(dataset)}


def same_row(exported: dict, stored: dict) -> bool:
    """Every manifest field equal; dict fields may carry the other rows' keys as None (one schema per column)."""
    for key, value in stored.items():
        got = exported[key]
        if isinstance(value, dict):
            if {k: v for k, v in got.items() if k in value} != value or any(
                v is not None for k, v in got.items() if k not in value
            ):
                return False
        elif got != value:
            return False
    return True


def test_imagefolder_loads_with_datasets_and_torchvision(tmp_path):
    import datasets
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCard, DatasetCardData
    from torchvision.datasets import ImageFolder

    store = make_store(tmp_path / "store")
    result = export_dataset("blobs", tmp_path / "out", store=tmp_path / "store", id_dataset="cifar10", progress=False)
    assert result.n_images == 12 and result.per_class == {"cat": 4, "dog": 4, "ship": 4}
    loaded = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "hf"))
    rows = loaded["train"]
    stored = manifest(store)
    assert len(rows) == len(stored) == 12
    # every manifest field is a column, and the label a ClassLabel of the class names by the generator's index
    assert set(rows.column_names) == {"image", "label", *next(iter(stored.values()))}
    assert rows.features["label"] == datasets.ClassLabel(names=list(CLASSES))
    assert rows["label"] == rows["class_index"] and rows.features["label"].int2str(rows["label"]) == rows["class_name"]
    assert rows.features["diagnostics"]["verified_id_percentile"].dtype == "float64"
    assert rows.features["sampler_params"]["steps_beyond"].dtype == "float64"
    for row in rows:
        assert same_row(row, stored[row["image_id"]]), row["image_id"]
        original = store.open_image(stored[row["image_id"]]["path"])
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), np.asarray(original.convert("RGB")))
    folder = ImageFolder(str(tmp_path / "out" / "train"))
    assert len(folder) == 12 and folder.classes == list(CLASSES)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| 1 | dog | 4 |" in card and "CIFAR-10 (Krizhevsky 2009)" in card and "`knn_boundary` (6)" in card
    assert '"preset": "fast"' in card and "ID dataset: cifar10" in card
    # the card: its YAML round-trips through DatasetCardData and declares what load_dataset gives
    data = DatasetCard.load(tmp_path / "out" / "README.md").data
    assert isinstance(data, DatasetCardData) and DatasetCardData(**data.to_dict()).to_dict() == data.to_dict()
    assert data.license == "unknown" and "- License: `unknown` (CIFAR-10" in card  # one license, the text's
    assert data.task_categories == ["image-classification"] and data.size_categories == ["n<1K"]
    assert data.configs == [{"config_name": "default", "data_files": [{"split": "train", "path": "train/**"}]}]
    info = DatasetInfosDict.from_dataset_card_data(data)["default"]
    assert info.features == rows.features and info.splits["train"].num_examples == 12
    # the hub's way in (the card's configs and features) gives the same dataset
    from_card = datasets.load_dataset(str(tmp_path / "out"), cache_dir=str(tmp_path / "hf2"))["train"]
    assert from_card.features == rows.features and from_card["image_id"] == rows["image_id"]


@pytest.mark.parametrize(
    "given, expected",
    [(None, "cc-by-4.0"), ("MIT", "mit"), ("Terms of the lab, see LICENSE.txt", "other")],
)
def test_card_names_one_license(tmp_path, given, expected):
    from huggingface_hub import DatasetCard

    make_store(tmp_path / "store")
    export_dataset(
        "blobs", tmp_path / "o", store=tmp_path / "store", id_dataset="digits", license=given, progress=False
    )
    card = DatasetCard.load(tmp_path / "o" / "README.md")
    assert card.data.license == expected and f"- License: `{expected}`" in card.text
    if expected == "other":
        assert card.data.license_name == "terms-of-the-lab-see-license-txt" and given in card.text


def test_webdataset_shards_read_back_with_webdataset(tmp_path):
    import webdataset as wds

    store = make_store(tmp_path / "store")
    result = export_dataset(
        "blobs", tmp_path / "wds", format="webdataset", shard_size=5, store=tmp_path / "store", progress=False
    )
    shards = (tmp_path / "wds" / "shards.txt").read_text().split()
    assert shards == [f"blobs-{i:06d}.tar" for i in range(math.ceil(12 / 5))] and result.n_images == 12
    samples = list(wds.WebDataset([str(tmp_path / "wds" / s) for s in shards], shardshuffle=False).decode("pil"))
    stored = manifest(store)
    assert len(samples) == 12 and {s["json"]["image_id"] for s in samples} == set(stored)
    for s in samples:
        assert s["json"] == stored[s["json"]["image_id"]] and s["cls"] == s["json"]["class_index"]
        assert s["png"].size == (24, 24)


def test_filters_choose_the_images(tmp_path):
    import pyarrow.parquet as pq

    store = make_store(tmp_path / "store")
    by_id = {r.image_id: r for r in store.records("blobs")}
    res = export_dataset("blobs", tmp_path / "a", store=tmp_path / "store", max_id_percentile=15, progress=False)
    expected = {i for i, r in by_id.items() if r.diagnostics["verified_id_percentile"] <= 15}
    assert 0 < res.n_images == len(expected) < 12
    rows = pq.read_table(tmp_path / "a" / "train" / "metadata.parquet").to_pylist()
    assert {r["image_id"] for r in rows} == expected
    res = export_dataset("blobs", tmp_path / "b", store=tmp_path / "store", verified_only=True, progress=False)
    assert res.n_images == sum(r.diagnostics["verified_id_percentile"] <= 10 for r in by_id.values())
    res = export_dataset("blobs", tmp_path / "c", store=tmp_path / "store", classes=["dog", "ship"], progress=False)
    assert res.per_class == {"dog": 4, "ship": 4}
    assert sorted(p.name for p in (tmp_path / "c" / "train").iterdir()) == ["dog", "metadata.parquet", "ship"]
    rows = pq.read_table(tmp_path / "c" / "train" / "metadata.parquet").to_pylist()
    assert {r["label"] for r in rows} == {1, 2}  # the label keeps the class index of the whole dataset


def test_cli_export_and_its_errors(tmp_path):
    make_store(tmp_path / "store")
    runner = CliRunner()
    base = ["export", "blobs", str(tmp_path / "out"), "--store", str(tmp_path / "store")]
    res = runner.invoke(app, [*base, "--format", "webdataset", "--shard-size", "4", "--classes", "cat"])
    assert res.exit_code == 0, res.output
    assert "4 images of 1 classes as webdataset" in res.output and (tmp_path / "out" / "blobs-000000.tar").is_file()
    for args, field in [
        ([], "out"),  # the folder holds the first export now
        (["--format", "zip"], "format"),
        (["--classes", "cow"], "classes[0]"),
        (["--max-id-percentile", "120"], "max_id_percentile"),
        (["--shard-size", "0", "--format", "webdataset"], "shard_size"),
    ]:
        res = runner.invoke(
            app, [*base[:2], str(tmp_path / ("out" if field == "out" else f"x-{field}")), *base[3:], *args]
        )
        assert res.exit_code == 2 and f"error: {field}:" in res.output, (args, res.output)
    res = runner.invoke(app, ["export", "nope", str(tmp_path / "y"), "--store", str(tmp_path / "store")])
    assert res.exit_code == 2 and "error: dataset:" in res.output and "blobs" in res.output
    store = ResultStore(tmp_path / "store")
    store.write_image(
        "plain",
        ImageRecord(
            image_id="a", class_index=0, class_name="cat", vector_id="v", sampler="s", seed=0, model="m", prompt="p"
        ),
        Image.new("RGB", (8, 8)),
    )
    with pytest.raises(InputError) as exc:  # no verification recorded: refused, not passed through
        export_dataset("plain", tmp_path / "z", store=tmp_path / "store", verified_only=True, progress=False)
    assert exc.value.field == "max_id_percentile"


def test_s3_round_trip(tmp_path, bucket_url):
    """A store on S3 exported to S3 prefixes, read back by ``webdataset`` and ``datasets`` from the bucket."""
    import datasets
    import webdataset as wds

    from oodsynth.export.webdataset import use_fsspec_for_s3

    store = make_store(f"{bucket_url}/store")
    stored = manifest(store)
    shards_url = f"{bucket_url}/exports/wds"
    res = export_dataset(
        "blobs", shards_url, format="webdataset", shard_size=5, store=f"{bucket_url}/store", progress=False
    )
    assert res.files[:3] == [f"blobs-{i:06d}.tar" for i in range(3)]
    use_fsspec_for_s3()
    samples = list(wds.WebDataset([f"{shards_url}/{s}" for s in res.files[:3]], shardshuffle=False).decode("pil"))
    assert len(samples) == 12 and all(s["json"] == stored[s["json"]["image_id"]] for s in samples)
    folder_url = f"{bucket_url}/exports/hf"
    export_dataset("blobs", folder_url, store=f"{bucket_url}/store", progress=False)
    # datasets reads a remote imagefolder's images but not its metadata's relative file names: copy it down
    import fsspec

    fsspec.filesystem("s3", use_listings_cache=False).get(folder_url + "/", str(tmp_path / "hf-copy"), recursive=True)
    rows = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "hf-copy"), cache_dir=str(tmp_path / "hf"))[
        "train"
    ]
    assert len(rows) == 12 and all(same_row(r, stored[r["image_id"]]) for r in rows)
    with pytest.raises(InputError) as exc:  # a prefix that holds files is refused
        export_dataset("blobs", folder_url, store=f"{bucket_url}/store", progress=False)
    assert exc.value.field == "out"
