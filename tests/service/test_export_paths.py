"""No export carries a path of the machine that wrote it: the model by hub id or content hash, the store by name."""

from __future__ import annotations

import hashlib
import json

import pytest
from PIL import Image

from oodsynth.export.portable import portable_model
from oodsynth.service.export import export_dataset
from oodsynth.store.results import ImageRecord, ResultStore

REVISION = "133a221b8aa7292a167afc5127cb63fb5005638b"


def write_store(root, models: list[str], init_image: str) -> ResultStore:
    store = ResultStore(root)
    for i, model in enumerate(models):
        record = ImageRecord(
            image_id=f"img-{i}",
            class_index=i % 2,
            class_name=("cat", "dog")[i % 2],
            vector_id=f"v{i}",
            sampler="knn_boundary",
            seed=i,
            model=model,
            prompt="a photo of <outlier:cat>",
            diagnostics={"id_percentile": 3.5 + i},
            decode={"preset": "fast", "init_image": init_image},
        )
        assert store.write_image("d", record, Image.new("RGB", (8, 8), (40 * i, 0, 0)))
    return store


def test_models_are_named_by_hub_id_or_content_hash(tmp_path):
    weights = tmp_path / "weights" / "tiny-sd"
    (weights / "unet").mkdir(parents=True)
    (weights / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (weights / "unet" / "w.bin").write_bytes(bytes(range(256)) * 10)
    expected = hashlib.sha256()
    for name in ("model_index.json", "unet/w.bin"):  # relative name then bytes, in sorted order
        expected.update(name.encode())
        expected.update((weights / name).read_bytes())
    assert portable_model(str(weights)) == f"tiny-sd@sha256:{expected.hexdigest()[:16]}"
    copy = tmp_path / "elsewhere" / "tiny-sd"
    copy.parent.mkdir()
    weights.rename(copy)  # the same weights in another folder: the same name
    assert portable_model(str(copy)) == f"tiny-sd@sha256:{expected.hexdigest()[:16]}"
    cached = f"/home/u/.cache/huggingface/hub/models--CompVis--stable-diffusion-v1-4/snapshots/{REVISION}"
    assert portable_model(cached) == f"CompVis/stable-diffusion-v1-4@{REVISION}"
    assert portable_model("CompVis/stable-diffusion-v1-4") == "CompVis/stable-diffusion-v1-4"
    assert portable_model("/gone/decoder") == "decoder (local folder, absent at export: no content hash)"


@pytest.mark.parametrize("fmt", ["imagefolder", "webdataset", "openood"])
def test_no_absolute_path_in_an_export(tmp_path, fmt):
    import datasets

    weights = tmp_path / "models" / "tiny"
    weights.mkdir(parents=True)
    (weights / "config.json").write_text("{}")
    cached = f"{tmp_path}/hf/hub/models--org--sd/snapshots/{REVISION}"
    write_store(tmp_path / "store", [str(weights), cached, str(weights)], init_image=str(tmp_path / "real" / "a.png"))
    out = tmp_path / "export"
    export_dataset("d", out, format=fmt, store=tmp_path / "store", progress=False)
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written and all(str(tmp_path).encode() not in p.read_bytes() for p in written)  # tar, parquet, text
    card = (out / "README.md").read_text()
    hashed = f"tiny@sha256:{hashlib.sha256(b'config.json{}').hexdigest()[:16]}"
    assert f"`{hashed}` (2)" in card and f"`org/sd@{REVISION}` (1)" in card
    assert "from the result store store (a local folder)" in card
    if fmt == "imagefolder":
        rows = datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "c"))["train"]
        assert rows["model"] == [hashed, f"org/sd@{REVISION}", hashed]
        assert [r["init_image"] for r in rows["decode"]] == ["a.png"] * 3
    if fmt == "openood":
        rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        assert [r["model"] for r in rows] == [hashed, f"org/sd@{REVISION}", hashed]
