"""What every exporter shares: the output location, the manifest as columns, the contract (``Exporter``).

An exporter receives the chosen records one by one with their stored PNG bytes (copied, never re-encoded)
and writes its format under ``Output``, a local folder or an ``s3://bucket/prefix`` opened through fsspec,
so the same code writes both. The dataset card lives in ``card.py``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from ..errors import InputError
from ..store.results import ImageRecord
from .card import DatasetCard
from .portable import portable_row


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
    union over the records (missing: None), so Arrow, ``datasets`` and pandas read them as written. No absolute
    path of this machine stays in a row (``portable_row``: the model by hub id or content hash).
    """
    rows = [portable_row(r.model_dump()) for r in records]
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
