"""Result store: atomic, idempotent writes (also from several processes) and the torch Dataset."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from oodsynth.jobs import DecodeJob, image_id_for, image_seed_for
from oodsynth.outlier_dataset import StoredOutliers
from oodsynth.store import MANIFEST, ImageRecord, ResultStore


def _record(image_id: str, class_index: int = 0, class_name: str = "cat") -> ImageRecord:
    return ImageRecord(
        image_id=image_id, class_index=class_index, class_name=class_name, vector_id=f"v-{image_id}",
        sampler="knn_boundary", sampler_params={"k": 3}, seed=7, model="tiny", prompt="a cat",
        diagnostics={"log_density": -1.5, "id_percentile": 2.0}, job_id="job-1",
    )


def _image(value: int, size: int = 8) -> Image.Image:
    return Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8))


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
    assert (tmp_path / "ds" / MANIFEST).read_text().count("\n") == 2
    assert store.datasets() == ["ds"]
    report = store.verify("ds")
    assert report.ok and report.n_records == 2 and report.n_images == 2
    # A second store instance (another process) sees the rows written by the first.
    assert ResultStore(tmp_path).stored_ids("ds") == {"a", "b"}


def test_torn_tail_and_orphans(tmp_path):
    store = ResultStore(tmp_path)
    store.write_image("ds", _record("a"), _image(1))
    manifest = tmp_path / "ds" / MANIFEST
    with open(manifest, "ab") as fh:  # a writer killed in the middle of its row
        fh.write(b'{"image_id": "b", "pa')
    (tmp_path / "ds" / "cat" / ".c.png.dead.tmp").write_bytes(b"\x89PNG half")
    Image.new("RGB", (4, 4)).save(tmp_path / "ds" / "cat" / "orphan.png")
    report = store.verify("ds")
    assert report.torn_tail and report.orphans == ["ds/cat/orphan.png"]
    assert report.temp_files == ["ds/cat/.c.png.dead.tmp"]
    assert [r.image_id for r in store.records("ds")] == ["a"]  # readers ignore the torn row
    # The next writer cuts the torn row off and removes the dead temp file of its image.
    assert ResultStore(tmp_path).write_image("ds", _record("c"), _image(3))
    assert ResultStore(tmp_path).write_image("ds", _record("b"), _image(2))
    assert [r.image_id for r in store.records("ds")] == ["a", "c", "b"]
    report = store.verify("ds")
    assert not report.torn_tail and report.temp_files == [] and report.duplicates == []


_WRITER = """
import sys
import numpy as np
from PIL import Image
from oodsynth.store import ImageRecord, ResultStore
root, value, ids = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
store = ResultStore(root)
for i in ids:
    rec = ImageRecord(image_id=i, class_index=0, class_name="cat", vector_id="v-" + i, sampler="s",
                      seed=7, model="tiny", prompt="a cat")
    store.write_image("ds", rec, Image.fromarray(np.full((32, 32, 3), value, dtype=np.uint8)))
"""


def test_concurrent_writers_no_duplicates(tmp_path):
    """Three processes write overlapping ids in different orders: each image once, one row each."""
    ids = [f"i{k:03d}" for k in range(40)]
    orders = (ids, ids[::-1], ids[::2])
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), str(v), ",".join(o)])
             for v, o in enumerate(orders, start=1)]
    for p in procs:
        assert p.wait(60) == 0
    store = ResultStore(tmp_path)
    rows = [r.image_id for r in store.records("ds")]
    assert sorted(rows) == ids
    assert (tmp_path / "ds" / MANIFEST).read_text().count("\n") == len(ids)
    report = store.verify("ds")
    assert report.ok, report
    for r in store.records("ds"):
        with Image.open(tmp_path / r.path) as im:
            im.load()


def test_bad_names(tmp_path):
    store = ResultStore(tmp_path)
    for bad in ("", "a/b", "..", ".hidden"):
        with pytest.raises(ValueError, match="dataset"):
            store.write_image(bad, _record("a"), _image(1))
    with pytest.raises(ValueError, match="image_id"):
        _record("../x")


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
    item = dict(image_id="a", vector_id="v", vector=[0.1, 0.2], class_index=0, class_name="cat",
                seed=1, sampler="barker")
    job = DecodeJob.model_validate({"dataset": "ds", "model": "m", "items": [item]})
    assert job.prompt("<tok>") == "A high-quality image of the <tok>"
    import pydantic

    for bad, field in (({"height": 100}, "height"), ({"dataset": "a/b"}, "dataset"),
                       ({"prompt_template": "no token"}, "prompt_template"), ({"items": []}, "items"),
                       ({"items": [{**item, "vector": [float("nan"), 1.0]}]}, "vector")):
        with pytest.raises(pydantic.ValidationError, match=field):
            DecodeJob.model_validate({"dataset": "ds", "model": "m", "items": [item], **bad})
    a = image_id_for("ds", "s1:0", 0)
    assert a == image_id_for("ds", "s1:0", 0) and a != image_id_for("ds", "s1:0", 1)
    assert image_seed_for(a, 3) == image_seed_for(a, 3) != image_seed_for(a, 4)
    assert 0 <= image_seed_for(a, None) < 2**63
