"""What every exporter shares: the output location, the manifest as columns, the dataset card.

An exporter receives the chosen records one by one with their stored PNG bytes (copied, never re-encoded)
and writes its format under ``Output``, a local folder or an ``s3://bucket/prefix`` opened through fsspec,
so the same code writes both.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import InputError
from ..store.results import ImageRecord

# Where the ID datasets the project knows come from, for the card's license line.
SOURCE_LICENSES = {
    "digits": "UCI ML hand-written digits (scikit-learn's copy), CC BY 4.0",
    "animals": "animal-mnist 0.4 (Animal silhouette extension to MNIST), MIT",
    "cifar10": "CIFAR-10 (Krizhevsky 2009), no explicit license; terms at https://www.cs.toronto.edu/~kriz/cifar.html",
    "cifar100": "CIFAR-100 (Krizhevsky 2009), no explicit license; terms at https://www.cs.toronto.edu/~kriz/cifar.html",
}


class Output:
    """A folder or ``s3://`` prefix to write under; refuses one that already holds files."""

    def __init__(self, out: str | Path, storage_options: dict | None = None):
        import fsspec

        self.url = str(out).rstrip("/")
        self.is_s3 = self.url.startswith("s3://")
        if "://" in self.url and not self.is_s3:
            raise InputError("out", f"{self.url}: give a folder or an s3://bucket/prefix")
        options = {"use_listings_cache": False, **(storage_options or {})} if self.is_s3 else {"auto_mkdir": True}
        self.fs = fsspec.filesystem("s3" if self.is_s3 else "file", **options)
        if self.fs.exists(self.url) and (not self.fs.isdir(self.url) or self.fs.ls(self.url)):
            raise InputError("out", f"{self.url} already exists and is not an empty folder")

    def path(self, relative: str) -> str:
        return f"{self.url}/{relative}"

    def open(self, relative: str, mode: str = "wb"):
        return self.fs.open(self.path(relative), mode)

    def write(self, relative: str, data: bytes | str) -> str:
        with self.open(relative, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        return relative


def _column(values: list[Any]) -> list[Any]:
    """One type per column: lists/dicts as JSON text, ints with floats as floats, numbers with text as text."""
    present = [v for v in values if v is not None]
    if any(isinstance(v, (list, dict)) for v in present):
        return [None if v is None else json.dumps(v, sort_keys=True) for v in values]
    if any(isinstance(v, str) for v in present) and any(not isinstance(v, str) for v in present):
        return [None if v is None else str(v) for v in values]
    if any(isinstance(v, float) for v in present):
        return [None if v is None else float(v) for v in values]
    return values


def manifest_columns(records: list[ImageRecord]) -> list[dict[str, Any]]:
    """Every manifest field of every record, one row each, with the same keys and one type per column.

    Dict fields (``sampler_params``, ``diagnostics``, ``decode``) stay dicts (struct columns), their keys the
    union over the records (missing: None), so Arrow, ``datasets`` and pandas read them as written.
    """
    rows = [r.model_dump() for r in records]
    if not rows:
        return []
    for name in rows[0]:
        if isinstance(rows[0][name], dict):
            keys = sorted({k for row in rows for k in row[name]})
            columns = {k: _column([row[name].get(k) for row in rows]) for k in keys}
            for i, row in enumerate(rows):
                row[name] = {k: columns[k][i] for k in keys}
        else:
            for row, value in zip(rows, _column([row[name] for row in rows])):
                row[name] = value
    return rows


@dataclass
class DatasetCard:
    """The dataset card (README.md): what the images are, where they came from, counts per class."""

    dataset: str
    store: str
    records: list[ImageRecord]
    format: str
    id_dataset: str | None = None
    encoder: str | None = None
    license: str | None = None
    selection: str = "all stored images"
    layout: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def license_line(self) -> str:
        if self.license:
            return self.license
        if self.id_dataset in SOURCE_LICENSES:
            return SOURCE_LICENSES[self.id_dataset]
        return "unknown: pass --license with the ID data's license line"

    def render(self) -> str:
        per_class = Counter((r.class_index, r.class_name) for r in self.records)
        samplers = Counter(r.sampler for r in self.records)
        params = Counter(json.dumps(r.sampler_params, sort_keys=True) for r in self.records)
        decodes = Counter(json.dumps(r.decode, sort_keys=True) for r in self.records)
        models = Counter(r.model for r in self.records)
        lines = [
            "---",
            f"pretty_name: {json.dumps(f'oodsynth outliers: {self.dataset}')}",
            "license: other",
            "tags: [out-of-distribution, synthetic, oodsynth]",
            f"size_categories: [{_size_category(len(self.records))}]",
            "---",
            "",
            f"# {self.dataset}: synthetic outliers",
            "",
            f"{len(self.records)} images generated by oodsynth (text-aligned features sampled from low-density "
            "regions of each class, decoded by a text-to-image model), exported as "
            f"`{self.format}` from the result store `{self.store}` ({self.selection}).",
            "",
            f"- ID dataset: {self.id_dataset or 'not given (pass --id-dataset)'}",
            f"- Encoder: {self.encoder or 'not given (pass --encoder)'}",
            f"- License of the source data: {self.license_line()}",
            f"- Decoder model: {_counted(models)}",
            f"- Sampler: {_counted(samplers)}",
            f"- Sampler settings: {_counted(params)}",
            f"- Decode settings: {_counted(decodes)}",
            *(f"- {k}: {v}" for k, v in self.extra.items()),
            "",
            "## Images per class",
            "",
            "| class index | class | images |",
            "|---:|---|---:|",
            *(f"| {c} | {name} | {n} |" for (c, name), n in sorted(per_class.items())),
            "",
            "## Layout",
            "",
            self.layout,
            "",
        ]
        return "\n".join(lines)


def _counted(counter: Counter) -> str:
    return "; ".join(f"`{k}` ({n})" if len(counter) > 1 else f"`{k}`" for k, n in counter.most_common()) or "-"


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


class Exporter(ABC):
    """Writes one format under ``out``: ``add`` every chosen image, then ``finish`` once with the card."""

    format: ClassVar[str]
    layout: ClassVar[str]  # the card's "Layout" section

    def __init__(self, out: str | Path, storage_options: dict | None = None, **options: Any):
        self.output = Output(out, storage_options)
        self.n = 0

    @abstractmethod
    def add(self, record: ImageRecord, png: bytes) -> None:
        """Write one image with its manifest row."""

    @abstractmethod
    def finish(self, card: DatasetCard) -> list[str]:
        """Close what is open, write the card; the files written (relative to ``out``)."""
