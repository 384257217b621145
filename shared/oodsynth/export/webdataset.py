"""WebDataset shards: ``<dataset>-000000.tar``, ... of ``shard_size`` samples, each ``.png`` + ``.json`` + ``.cls``.

``webdataset.WebDataset(urls)`` reads them; written with webdataset's own ``ShardWriter`` straight to the output
(a folder, or S3 through fsspec: ``use_fsspec_for_s3`` registers the ``s3`` scheme in webdataset's URL table,
its documented extension point, for reading and writing alike). The ``.json`` is the manifest row as stored,
with the model named portably (``portable_row``). The card declares the features ``datasets``' webdataset
builder reads (``load_dataset(OUT)`` or the hub id): ``png`` an image, ``json`` the typed manifest, ``cls`` the
label as a ClassLabel.
"""

from __future__ import annotations

import math

from ..errors import InputError
from ..store.results import ImageRecord
from .base import DatasetCard, Exporter, manifest_columns
from .features import class_names, image_feature, label_features, row_features, string_feature
from .portable import portable_row

DEFAULT_SHARD_SIZE = 1000
SHARD_PATTERN = "{dataset}-%06d.tar"


def use_fsspec_for_s3(storage_options: dict | None = None) -> None:
    """Let webdataset open ``s3://`` URLs (read and write) with fsspec/s3fs and the usual ``AWS_*`` settings."""
    import importlib

    import fsspec

    gopen = importlib.import_module("webdataset.gopen")  # the module; the package re-exports a function of that name

    def gopen_fsspec(url, mode="rb", bufsize=8192, **kw):
        return fsspec.open(url, mode, **(storage_options or {})).open()

    gopen.gopen_schemes["s3"] = gopen_fsspec


class WebDatasetExporter(Exporter):
    format = "webdataset"
    layout = (
        "Tar shards `<dataset>-NNNNNN.tar`; per sample `<key>.png` (the stored image), `<key>.json` (its manifest "
        "row) and `<key>.cls` (class index). Read with `webdataset.WebDataset(urls).decode('pil')`; `shards.txt` "
        "lists the shard names."
    )

    def __init__(self, out, storage_options=None, *, shard_size: int = DEFAULT_SHARD_SIZE, dataset: str = "outliers"):
        import webdataset as wds

        if shard_size < 1:
            raise InputError("shard_size", f"must be at least 1, got {shard_size}")
        super().__init__(out, storage_options)
        if self.output.is_s3:
            use_fsspec_for_s3(storage_options)
        else:
            self.output.fs.makedirs(self.output.url, exist_ok=True)
        self.shard_size = shard_size
        self.shards: list[str] = []
        self.records: list[ImageRecord] = []  # rows only (for the card's features), never the images
        self.writer = wds.ShardWriter(
            self.output.path(SHARD_PATTERN.format(dataset=dataset)),
            maxcount=shard_size,
            maxsize=math.inf,
            verbose=0,
            post=lambda name: self.shards.append(name.rsplit("/", 1)[-1]),
        )

    def add(self, record: ImageRecord, png: bytes) -> None:
        self.writer.write(
            {
                "__key__": f"{self.n:08d}",
                "png": png,
                "json": portable_row(record.model_dump()),
                "cls": record.class_index,
            }
        )
        self.records.append(record)
        self.n += 1

    def finish(self, card: DatasetCard) -> list[str]:
        self.writer.close()
        card.extra.setdefault("Shards", f"{len(self.shards)} of up to {self.shard_size} images")
        listing = self.output.write("shards.txt", "".join(f"{s}\n" for s in self.shards))
        keys = {"__key__": string_feature(), "__url__": string_feature(), "png": image_feature()}
        columns = {"json": row_features(manifest_columns(self.records))} if self.records else {}
        card.features = label_features(card.class_names or class_names(self.records), columns, keys, label="cls")
        card.configs = [{"config_name": "default", "data_files": [{"split": "train", "path": "*.tar"}]}]
        return [*self.shards, listing, self.output.write("README.md", card.render())]
