"""Local result store: atomic, idempotent writes (also from several processes), sharded manifest,
legacy manifests, the one naming rule, and the torch Dataset."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from oodsynth.errors import InputError
from oodsynth.names import validate_name
from oodsynth.queue.image_ids import image_id_for, image_seed_for
from oodsynth.queue.payloads import DecodeJob
from oodsynth.store.results import LEGACY_MANIFEST, ImageRecord, ResultStore
from oodsynth.training.outlier_dataset import StoredOutliers


def _record(image_id: str, class_index: int = 0, class_name: str = "cat") -> ImageRecord:
    return ImageRecord(
        image_id=image_id,
        class_index=class_index,
        class_name=class_name,
        vector_id=f"v-{image_id}",
        sampler="knn_boundary",
        sampler_params={"k": 3},
        seed=7,
        model="tiny",
        prompt="a cat",
        diagnostics={"log_density": -1.5, "id_percentile": 2.0},
        job_id="job-1",
    )


def _image(value: int, size: int = 8) -> Image.Image:
    return Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8))


def _shard_lines(root, dataset: str, job_id: str) -> list[str]:
    return (root / dataset / "manifest" / f"{job_id}.jsonl").read_text().splitlines()


def test_write_read_and_idempotent(tmp_path):
    store = ResultStore(tmp_path)
    assert store.write_image("ds", _record("a"), _image(10)) is True
    assert store.write_image("ds", _record("b", 1, "sea/lion"), _image(20)) is True
    # A retry of the same image writes nothing: no new row, the first file kept.
    assert store.write_image("ds", _record("a"), _image(99)) is False
    rows = store.records("ds")
    assert [r.image_id for r in rows] == ["a", "b"]
    assert rows[0].path == "ds/cat/a.png" and rows[0].dataset == "ds"
    assert rows[1].path == "ds/sea_lion/b.png"  # a separator in a class name stays one folder
    assert np.asarray(Image.open(tmp_path / rows[0].path))[0, 0, 0] == 10
    # The job's rows live in its own shard; there is no shared manifest file to append to.
    assert len(_shard_lines(tmp_path, "ds", "job-1")) == 2 and not (tmp_path / "ds" / LEGACY_MANIFEST).exists()
    assert store.manifest_path("ds") == tmp_path / "ds" / "manifest"
    assert store.datasets() == ["ds"]
    report = store.verify("ds")
    assert report.ok and report.n_records == 2 and report.n_images == 2
    # A second store instance (another process) sees the rows written by the first.
    assert ResultStore(tmp_path).stored_ids("ds") == {"a", "b"}
    assert store.open_image(rows[1].path).getpixel((0, 0)) == (20, 20, 20)


def test_retried_job_rewrites_its_own_shard(tmp_path):
    """A retry (a new process) keeps the rows of the first attempt and adds its own, in the same shard."""
    first = ResultStore(tmp_path)
    assert first.write_images("ds", [(_record("a"), _image(1)), (_record("b"), _image(2))]) == [True, True]
    other = _record("z").model_copy(update={"job_id": "job-2"})
    assert first.write_image("ds", other, _image(3))
    retry = ResultStore(tmp_path)
    assert retry.write_images("ds", [(_record("b"), _image(9)), (_record("c"), _image(4))]) == [False, True]
    assert [json.loads(line)["image_id"] for line in _shard_lines(tmp_path, "ds", "job-1")] == ["a", "b", "c"]
    assert len(_shard_lines(tmp_path, "ds", "job-2")) == 1
    assert [r.image_id for r in retry.records("ds")] == ["a", "b", "z", "c"]  # merged in write order
    assert retry.verify("ds").ok


def test_stored_ids_reads_only_shards_written_since_the_last_call(tmp_path, monkeypatch):
    """A worker builds a new store per job: unchanged shards are not read again (per-process cache)."""
    from oodsynth.store.backends import LocalBackend

    for job in range(5):
        ResultStore(tmp_path).write_image("ds", _record(f"x{job}").model_copy(update={"job_id": f"j{job}"}), _image(1))
    assert ResultStore(tmp_path).stored_ids("ds") == {f"x{j}" for j in range(5)}
    reads = []
    original = LocalBackend.read
    monkeypatch.setattr(LocalBackend, "read", lambda self, key: reads.append(key) or original(self, key))
    assert len(ResultStore(tmp_path).stored_ids("ds")) == 5 and reads == []
    ResultStore(tmp_path).write_image("ds", _record("y").model_copy(update={"job_id": "j9"}), _image(1))
    reads.clear()
    assert "y" in ResultStore(tmp_path).stored_ids("ds") and reads == ["ds/manifest/j9.jsonl"]


def test_abandoned_image_is_adopted_and_temp_files_removed(tmp_path):
    """A writer killed between its image and its row: the next writer of that image records it."""
    store = ResultStore(tmp_path)
    store.write_image("ds", _record("a"), _image(1))
    _image(7).save(tmp_path / "ds" / "cat" / "b.png")  # created, then killed before the row
    (tmp_path / "ds" / "cat" / ".b.png.dead.tmp").write_bytes(b"\x89PNG half")  # killed mid-write
    report = store.verify("ds")
    assert report.orphans == ["ds/cat/b.png"] and report.temp_files == ["ds/cat/.b.png.dead.tmp"]
    assert ResultStore(tmp_path).write_image("ds", _record("b"), _image(2)) is True
    assert np.asarray(store.open_image("ds/cat/b.png"))[0, 0, 0] == 7  # the existing file is kept
    assert [r.image_id for r in store.records("ds")] == ["a", "b"]
    assert store.verify("ds").ok


def test_legacy_single_file_manifest_is_still_read(tmp_path):
    """Stores written by earlier versions (one manifest.jsonl) are read as they are; new rows go to shards."""
    folder = tmp_path / "old" / "cat"
    folder.mkdir(parents=True)
    rows = []
    for i, image_id in enumerate(["x", "y"]):
        _image(i).save(folder / f"{image_id}.png")
        rec = _record(image_id).model_copy(
            update={
                "dataset": "old",
                "path": f"old/cat/{image_id}.png",
                "created_at": f"2025-01-0{i + 1}T00:00:00+00:00",
            }
        )
        rows.append(json.dumps(rec.model_dump()) + "\n")
    (tmp_path / "old" / LEGACY_MANIFEST).write_text("".join(rows) + '{"image_id": "w", "pa')  # torn by a killed writer
    store = ResultStore(tmp_path)
    assert store.datasets() == ["old"]
    assert [r.image_id for r in store.records("old")] == ["x", "y"]
    assert store.verify("old").torn_tail
    assert store.write_image("old", _record("x"), _image(5)) is False  # already recorded in the old file
    assert store.write_image("old", _record("z"), _image(5)) is True
    assert [r.image_id for r in store.records("old")] == ["x", "y", "z"]
    assert (tmp_path / "old" / LEGACY_MANIFEST).read_text().count("\n") == 2  # never appended to


_WRITER = """
import sys
import numpy as np
from PIL import Image
from oodsynth.store.results import ImageRecord, ResultStore
root, value, ids = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
store = ResultStore(root)
for i in ids:
    rec = ImageRecord(image_id=i, class_index=0, class_name="cat", vector_id="v-" + i, sampler="s",
                      seed=7, model="tiny", prompt="a cat")
    store.write_image("ds", rec, Image.fromarray(np.full((32, 32, 3), value, dtype=np.uint8)))
"""


@pytest.mark.slow  # writer processes
def test_concurrent_writers_no_duplicates(tmp_path):
    """Three processes write overlapping ids in different orders: each image once, one row each."""
    ids = [f"i{k:03d}" for k in range(40)]
    orders = (ids, ids[::-1], ids[::2])
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), str(v), ",".join(o)])
        for v, o in enumerate(orders, start=1)
    ]
    for p in procs:
        assert p.wait(60) == 0
    store = ResultStore(tmp_path)
    rows = [r.image_id for r in store.records("ds")]
    assert sorted(rows) == ids
    # Each process wrote its own shard (no job id), and no image has a row in two of them.
    assert len(store.manifest_rows("ds")) == len(ids)
    report = store.verify("ds")
    assert report.ok, report
    for r in store.records("ds"):
        with Image.open(tmp_path / r.path) as im:
            im.load()


@pytest.mark.parametrize(
    "bad, why",
    [
        ("", "non-empty"),
        ("   ", "non-empty"),
        (None, "non-empty"),
        ("x" * 129, "at most 128"),
        ("a\nb", r"U\+000A"),
        ("evil\u202egnp.exe", r"U\+202E"),
        ("zero\u200bwidth", r"U\+200B"),
        ("a\x00", r"U\+0000"),
        (".", "start with '.'"),
        ("..", "start with '.'"),
        (".hidden", "start with '.'"),
        ("a/b", "separators"),
        ("a\\b", "separators"),
        (" padded", "spaces"),
    ],
)
def test_names_follow_one_rule(tmp_path, bad, why):
    with pytest.raises(InputError, match=why) as info:
        validate_name("fit", bad)
    assert info.value.field == "fit"
    with pytest.raises(InputError, match=why) as info:
        ResultStore(tmp_path).write_image(bad, _record("a"), _image(1))
    assert info.value.field == "dataset"


def test_good_names_pass_and_image_ids_are_checked(tmp_path):
    for good in ("cifar-ood", "x" * 128, "a b", "Ölbild_2", "v1.4"):
        assert validate_name("dataset", good) == good
    with pytest.raises(ValueError, match="image_id"):
        _record("../x")


def test_store_setting_accepts_folders_and_s3_urls(monkeypatch):
    from pathlib import Path

    from oodsynth.config import Settings

    assert Settings(_env_file=None, store="s3://my-bucket/runs/a/").store == "s3://my-bucket/runs/a"
    assert Settings(_env_file=None, store="/data/store").store == Path("/data/store")
    for bad, why in (
        ("gs://b/p", "only local folders and s3"),
        ("s3://Bad_Bucket/p", "bucket name"),
        ("s3://bkt/../x", "not allowed"),
    ):
        with pytest.raises(ValueError, match=why):
            Settings(_env_file=None, store=bad)


def test_stored_outliers_dataset(tmp_path):
    store = ResultStore(tmp_path)
    store.write_image("one", _record("a", 0, "cat"), _image(5))
    store.write_image("two", _record("b", 3, "dog"), _image(6))
    both = StoredOutliers(tmp_path, ["one", "two"])
    assert len(both) == 2 and both.targets == [0, 3]
    image, label = both[1]
    assert image.mode == "RGB" and image.size == (8, 8) and label == 3
    arrays = StoredOutliers(tmp_path, "one", transform=lambda im: np.asarray(im).mean())
    assert arrays[0] == (5.0, 0)
    with pytest.raises(ValueError, match="datasets"):
        StoredOutliers(tmp_path, "missing")


def test_job_payload_validation():
    item = dict(
        image_id="a", vector_id="v", vector=[0.1, 0.2], class_index=0, class_name="cat", seed=1, sampler="barker"
    )
    job = DecodeJob.model_validate({"dataset": "ds", "model": "m", "items": [item]})
    assert job.prompt("<tok>") == "A high-quality image of the <tok>"
    import pydantic

    for bad, field in (
        ({"height": 100}, "height"),
        ({"dataset": "a/b"}, "dataset"),
        ({"prompt_template": "no token"}, "prompt_template"),
        ({"items": []}, "items"),
        ({"items": [{**item, "vector": [float("nan"), 1.0]}]}, "vector"),
    ):
        with pytest.raises(pydantic.ValidationError, match=field):
            DecodeJob.model_validate({"dataset": "ds", "model": "m", "items": [item], **bad})
    a = image_id_for("ds", "s1:0", 0)
    assert a == image_id_for("ds", "s1:0", 0) and a != image_id_for("ds", "s1:0", 1)
    assert image_seed_for(a, 3) == image_seed_for(a, 3) != image_seed_for(a, 4)
    assert 0 <= image_seed_for(a, None) < 2**63
