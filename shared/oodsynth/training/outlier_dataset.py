"""A torch ``Dataset`` over generated outliers: store datasets, and exports of them, for the training job.

A source is a store dataset name (one folder name: no '/'), or an export from ``oodsynth export``: an
imagefolder folder (``train/metadata.parquet``, or an older export's ``train/metadata.jsonl``), a webdataset folder (``shards.txt``), or shard URLs
(``.../x-{000000..000003}.tar``), each local or ``s3://``. Exports need no result store and no Redis: a
machine that holds the published set alone can train on it. Every source yields its manifest rows, so the
verification filter is the same for all, and an export lists its images in the store's order, so a run on it
repeats a run on the store seed for seed.

``StreamedOutliers`` reads webdataset shards as they stream instead (shards in a shuffled order, then a shuffle
buffer), for sets too large to hold: memory is one buffer of PNG bytes, not the set, but the order is the
buffer's, so a streamed run is not seed-for-seed the in-memory one.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..errors import InputError
from ..store.results import ImageRecord, ResultStore
from .outlier_selection import asks_more, resolve_selection, tightest_field, verified_key, verified_only

if TYPE_CHECKING:
    pass

IMAGEFOLDER_METADATA = "train/metadata.parquet"
SHARD_LIST = "shards.txt"


def is_export(source: str) -> bool:
    """A path or URL of an export rather than a store dataset name (names never hold '/')."""
    return "/" in source or "\\" in source or source.endswith(".tar")


def _fs(url: str, storage_options: dict | None):
    import fsspec

    if url.startswith("s3://"):
        return fsspec.filesystem("s3", use_listings_cache=False, **(storage_options or {}))
    return fsspec.filesystem("file")


def _record_of(row: dict) -> ImageRecord:
    """A manifest row as exported; the union-of-keys columns' None entries are dropped from the dict fields."""
    row = {
        k: ({kk: vv for kk, vv in v.items() if vv is not None} if isinstance(v, dict) else v) for k, v in row.items()
    }
    if isinstance(row.get("sampler_params"), str):
        row["sampler_params"] = json.loads(row["sampler_params"])
    return ImageRecord.model_validate(row)


def shard_urls(source: str, storage_options: dict | None = None) -> list[str] | None:
    """The webdataset shard URLs of an export (``.tar`` URLs as given, or a folder's ``shards.txt``); None if it
    is not a webdataset export."""
    source = source.rstrip("/")
    if source.endswith(".tar"):
        return [source]
    fs = _fs(source, storage_options)
    try:
        if fs.isfile(f"{source}/{SHARD_LIST}"):
            return [f"{source}/{n}" for n in fs.cat_file(f"{source}/{SHARD_LIST}").decode().split()]
    except (OSError, ValueError) as exc:
        raise InputError("outliers", f"{source}: unreadable export ({exc})") from exc
    return None


def read_export(source: str, storage_options: dict | None = None) -> list[tuple[ImageRecord, tuple[str, Any]]]:
    """The records of an export, each with where its image is: ``("file", url)`` or ``("bytes", png)``."""
    source = source.rstrip("/")
    urls = shard_urls(source, storage_options)
    if urls is not None:
        return _read_shards(urls, storage_options)
    fs = _fs(source, storage_options)
    try:
        for meta in (f"{source}/{IMAGEFOLDER_METADATA}", f"{source}/train/metadata.jsonl", f"{source}/metadata.jsonl"):
            if fs.isfile(meta):
                folder = meta.rsplit("/", 1)[0]
                rows = _metadata_rows(fs, meta)
                return [(_record_of(r), ("file", f"{folder}/{r['file_name']}")) for r in rows]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError("outliers", f"{source}: unreadable export ({exc})") from exc
    raise InputError(
        "outliers",
        f"{source} is neither an imagefolder export ({IMAGEFOLDER_METADATA}) nor webdataset shards ({SHARD_LIST}, "
        "or .tar URLs); store datasets are given by name",
    )


def _metadata_rows(fs, meta: str) -> list[dict]:
    """The rows of an imagefolder export's metadata (Parquet, or JSON Lines), without the ``label`` column."""
    if meta.endswith(".parquet"):
        import pyarrow.parquet as pq

        with fs.open(meta, "rb") as f:
            rows = pq.read_table(f).to_pylist()
        return [{k: v for k, v in r.items() if k != "label"} for r in rows]
    return [json.loads(line) for line in fs.cat_file(meta).decode().splitlines() if line.strip()]


def _use_fsspec(urls: list[str], storage_options: dict | None) -> None:
    if any(u.startswith("s3://") for u in urls):
        from ..export.webdataset import use_fsspec_for_s3

        use_fsspec_for_s3(storage_options)


def _read_shards(urls: list[str], storage_options: dict | None) -> list[tuple[ImageRecord, tuple[str, Any]]]:
    """Every sample of the shards, in order (the PNG bytes kept, decoded per item)."""
    import webdataset as wds

    _use_fsspec(urls, storage_options)
    out = []
    try:
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
            out.append((_record_of(json.loads(sample["json"])), ("bytes", sample["png"])))
    except (OSError, ValueError, KeyError, tarfile.TarError) as exc:
        raise InputError("outliers", f"{urls[0]}...: unreadable webdataset shards ({exc})") from exc
    return out


class StoredOutliers(Dataset):
    """Images of store datasets and exports as ``(transform(image) or image, class_index)``.

    ``root`` is a store folder or an ``s3://bucket/prefix`` URL (as ``OODSYNTH_STORE``); it is opened only
    when a source is a store dataset name. ``max_id_percentile``, ``min_id_percentile`` and ``max_margin`` keep
    only verified outliers (``resolve_selection``, ``verified_only``); ``"auto"`` keeps those at or below
    ``DEFAULT_MAX_ID_PERCENTILE`` when every image is verified, else all of them (``verification`` says which).
    The manifests are read once here, not per item; images are read lazily (shards: kept as PNG bytes) so it
    works with ``DataLoader`` workers.
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        datasets: str | Sequence[str],
        transform: Callable[[Image.Image], Any] | None = None,
        storage_options: dict | None = None,
        max_id_percentile: float | Literal["auto"] | None = None,
        min_id_percentile: float = 0.0,
        max_margin: float | None = None,
    ):
        names = [datasets] if isinstance(datasets, str) else list(datasets)
        if not names:
            raise InputError("datasets", "give at least one dataset name")
        self.store = None
        store_names = [n for n in names if not is_export(n)]
        if store_names:
            if root is None:
                raise InputError("store", f"{store_names} are store datasets but no result store is given")
            self.store = ResultStore(root, storage_options)
            available = set(self.store.datasets())
            unknown = [n for n in store_names if n not in available]
            if unknown:
                raise InputError(
                    "datasets", f"{unknown} not found in {self.store.url} (available: {sorted(available)})"
                )
        self.datasets = names
        self.transform = transform
        self.storage_options = storage_options
        items: list[tuple[ImageRecord, tuple[str, Any]]] = []
        for n in names:
            if is_export(n):
                items += read_export(n, storage_options)
            else:
                assert self.store is not None  # made above for the store datasets
                items += [(r, ("store", r.path)) for r in self.store.records(n)]
        self.records: list[ImageRecord] = [r for r, _ in items]
        self.selection = resolve_selection(max_id_percentile, min_id_percentile, max_margin, self.records)
        self.threshold = None if self.selection is None else self.selection.max_id_percentile
        self.verification = "all images (no verification filter)"
        if self.selection is None and max_id_percentile == "auto":
            self.verification = "all images: some carry no verification (decoded without an encoder)"
        if self.selection is not None:
            total = len(self.records)
            keep = {id(r) for r in verified_only(self.records, self.selection)}
            items = [(r, where) for r, where in items if id(r) in keep]
            self.records = [r for r, _ in items]
            self.verification = f"{len(self.records)} of {total} images verified at {self.selection.describe()}"
        self.sources = [where for _, where in items]
        self.targets = [r.class_index for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def _open(self, index: int) -> Image.Image:
        kind, ref = self.sources[index]
        if kind == "store":
            assert self.store is not None  # a store dataset's record
            return self.store.open_image(ref)
        if kind == "file":
            with _fs(ref, self.storage_options).open(ref, "rb") as f:
                ref = f.read()
        with Image.open(io.BytesIO(ref)) as img:
            img.load()
            return img

    def __getitem__(self, index: int):
        image = self._open(index).convert("RGB")
        return (self.transform(image) if self.transform is not None else image), self.records[index].class_index


class StreamedOutliers(IterableDataset):
    """Images of webdataset exports as ``(transform(image) or image, class_index)``, read as they stream.

    Each pass shuffles the shard order and then the samples through a ``buffer``-sample shuffle buffer, both
    seeded by ``seed`` plus the pass number; memory holds the buffer's PNG bytes, never the set. The verification
    filter is the in-memory one, applied per sample: a number keeps images at or below it (an image without the
    field is an error); ``"auto"`` without a band minimum or margin filter applies ``DEFAULT_MAX_ID_PERCENTILE``
    to the images that carry the field and keeps the others (a stream cannot first check that every image is
    verified); None keeps all.
    """

    def __init__(
        self,
        sources: Sequence[str],
        transform: Callable[[Image.Image], Any] | None = None,
        storage_options: dict | None = None,
        max_id_percentile: float | Literal["auto"] | None = None,
        buffer: int = 1000,
        seed: int = 0,
        min_id_percentile: float = 0.0,
        max_margin: float | None = None,
    ):
        self.urls: list[str] = []
        for source in sources:
            urls = shard_urls(source, storage_options) if is_export(source) else None
            if urls is None:
                raise InputError("stream", f"{source}: streaming reads webdataset exports only (shards.txt or .tar)")
            self.urls += urls
        if not self.urls:
            raise InputError("outliers", "give at least one webdataset export to stream")
        if buffer < 1:
            raise InputError("shuffle_buffer", f"must be at least 1, got {buffer}")
        self.transform, self.storage_options, self.buffer, self.seed = transform, storage_options, buffer, seed
        self.max_id_percentile, self.passes = max_id_percentile, 0
        self.selection = resolve_selection(max_id_percentile, min_id_percentile, max_margin)
        self.threshold = None if self.selection is None else self.selection.max_id_percentile
        self.keep_unverified = max_id_percentile == "auto" and not asks_more(min_id_percentile, max_margin)
        self.verification = f"streamed from {len(self.urls)} shard(s) through a {buffer}-sample shuffle buffer; " + (
            "all images" if self.selection is None else f"images verified at {self.selection.describe()}"
        )

    def _kept(self, record: ImageRecord) -> bool:
        if self.selection is None:
            return True
        key = verified_key()
        if key not in record.diagnostics:
            if self.keep_unverified:
                return True
            raise InputError("max_id_percentile", f"{record.image_id} carries no {key} (decoded without verification)")
        return bool(verified_only([record], self.selection))

    def _samples(self):
        """The kept samples' records and PNG bytes, in this pass's order."""
        import webdataset as wds

        _use_fsspec(self.urls, self.storage_options)
        worker = get_worker_info()
        if worker is None:
            seed, self.passes = self.seed + self.passes, self.passes + 1
        else:  # workers get a fresh copy each pass; the loader's base seed varies per pass and is theirs in common,
            # so they shuffle the shards alike and split them between them without overlap
            seed = self.seed + worker.seed - worker.id
        stream = wds.WebDataset(self.urls, shardshuffle=len(self.urls), seed=seed, empty_check=False)
        stream = stream.map(lambda s: (_record_of(json.loads(s["json"])), s["png"])).select(lambda s: self._kept(s[0]))
        buffer_rng = random.Random(seed + (worker.id if worker is not None else 0))
        stream = stream.shuffle(self.buffer, initial=self.buffer, rng=buffer_rng)
        try:
            yield from stream
        except (OSError, ValueError, KeyError, tarfile.TarError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError("outliers", f"{self.urls[0]}...: unreadable webdataset shards ({exc})") from exc

    def __iter__(self):
        for record, png in self._samples():
            with Image.open(io.BytesIO(png)) as img:
                image = img.convert("RGB")
            yield (self.transform(image) if self.transform is not None else image), record.class_index


def outlier_dataset(
    store: str | Path,
    datasets: list[str],
    image_size: int,
    max_id_percentile: float | Literal["auto"] | None = None,
    *,
    min_id_percentile: float = 0.0,
    max_margin: float | None = None,
    stream: bool = False,
    buffer: int = 1000,
    seed: int = 0,
) -> Dataset | IterableDataset:
    """The store's outliers as tensors at the ID resolution (only the verified ones under a selection).

    ``stream``: webdataset exports read as they stream (``StreamedOutliers``), not held in memory.
    """
    from torchvision import transforms

    transform = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor()])
    if stream:
        return StreamedOutliers(
            datasets,
            transform,
            buffer=buffer,
            seed=seed,
            max_id_percentile=max_id_percentile,
            min_id_percentile=min_id_percentile,
            max_margin=max_margin,
        )
    ds = StoredOutliers(
        store,
        datasets,
        transform=transform,
        max_id_percentile=max_id_percentile,
        min_id_percentile=min_id_percentile,
        max_margin=max_margin,
    )
    if len(ds) == 0 and ds.selection is not None:
        raise InputError(
            tightest_field(ds.selection), f"no image of {datasets} in {store} is verified at {ds.selection.describe()}"
        )
    if len(ds) == 0:
        raise InputError("outlier_datasets", f"{datasets} in {store} hold no images")
    return ds
