"""Result store: ``<root>/<dataset>/<class>/<image_id>.png`` plus an append-only manifest.

Several worker processes write into one store at once, and RQ retries jobs
after a worker dies, so every write must be atomic and idempotent:

* the PNG is written to a temp file in its final folder, then ``os.replace``-d
  into place (readers never see half an image);
* the manifest row is appended afterwards, under an exclusive ``fcntl.flock``
  on ``<dataset>/.manifest.lock``, and only if that ``image_id`` has no row yet
  (no manifest row without an image, no duplicate rows on retries);
* a row torn by a killed writer is cut off by the next writer (it holds the
  lock, so the tearing writer is gone) and ignored by readers.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from PIL import Image
from pydantic import BaseModel, Field

from .errors import InputError

MANIFEST = "manifest.jsonl"
LOCK = ".manifest.lock"
TEMP_SUFFIX = ".tmp"

_UNSAFE = re.compile(r"[\\/\x00]")


def validate_dataset_name(name: str) -> str:
    """A dataset name is one folder: non-empty, no path separators, not ``.``/``..``."""
    if not isinstance(name, str) or not name.strip():
        raise InputError("dataset", "must be a non-empty name")
    if _UNSAFE.search(name) or name in (".", "..") or name.startswith("."):
        raise InputError("dataset", f"{name!r} must be a single folder name (no path separators, no leading dot)")
    return name


def class_folder(class_name: str) -> str:
    """Folder name for a class: its name with path separators replaced (``a/b`` -> ``a_b``)."""
    safe = _UNSAFE.sub("_", class_name).strip() or "_"
    return "_" + safe if safe.startswith(".") else safe


def _utcnow() -> str:
    return datetime.now(timezone.utc).isoformat()


class ImageRecord(BaseModel):
    """One manifest row: everything needed to trace an image back to its vector."""

    image_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    path: str = ""  # relative to the store root; set by ResultStore.write_image
    dataset: str = ""  # set by ResultStore.write_image
    class_index: int = Field(ge=0)
    class_name: str
    vector_id: str
    sampler: str
    sampler_params: dict[str, Any] = Field(default_factory=dict)
    seed: int
    model: str
    prompt: str
    diagnostics: dict[str, Any] = Field(default_factory=dict)
    job_id: str | None = None
    created_at: str = Field(default_factory=_utcnow)


@dataclass
class VerifyReport:
    """What ``ResultStore.verify`` found; ``ok`` when the folder and manifest agree one to one."""

    dataset: str
    n_records: int
    n_images: int
    missing: list[str] = field(default_factory=list)  # rows whose PNG is absent
    orphans: list[str] = field(default_factory=list)  # PNGs (relative paths) without a row
    duplicates: list[str] = field(default_factory=list)  # image_ids with more than one row
    temp_files: list[str] = field(default_factory=list)  # leftovers of killed writers
    torn_tail: bool = False  # the manifest ends in a partial row

    @property
    def ok(self) -> bool:
        return not (self.missing or self.orphans or self.duplicates or self.temp_files or self.torn_tail)


def _parse_manifest(data: bytes) -> tuple[list[dict], int, bool]:
    """Rows of complete lines, the byte length they cover, and whether a torn tail follows."""
    end = data.rfind(b"\n") + 1
    rows = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
    return rows, end, end < len(data)


class ResultStore:
    """A folder of generated images and their manifests, safe for many concurrent writers."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        # per dataset: (bytes of the manifest already indexed, image_ids seen)
        self._index: dict[str, tuple[int, set[str]]] = {}

    # -- paths -------------------------------------------------------------------------
    def dataset_dir(self, dataset: str) -> Path:
        return self.root / validate_dataset_name(dataset)

    def manifest_path(self, dataset: str) -> Path:
        return self.dataset_dir(dataset) / MANIFEST

    def relative_path(self, dataset: str, class_name: str, image_id: str) -> str:
        return f"{validate_dataset_name(dataset)}/{class_folder(class_name)}/{image_id}.png"

    # -- writing -------------------------------------------------------------------------
    @contextmanager
    def _locked(self, dataset: str) -> Iterator[None]:
        directory = self.dataset_dir(dataset)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _refresh_index(self, dataset: str, *, repair: bool) -> set[str]:
        """Bring the cached id index up to date; with ``repair`` (lock held) cut a torn tail."""
        manifest = self.manifest_path(dataset)
        offset, ids = self._index.get(dataset, (0, set()))
        size = manifest.stat().st_size if manifest.exists() else 0
        if size < offset:  # truncated by a repair elsewhere: re-read from the start
            offset, ids = 0, set()
        if size > offset:
            with open(manifest, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
            rows, used, torn = _parse_manifest(data)
            ids.update(r["image_id"] for r in rows)
            offset += used
            if torn and repair:
                with open(manifest, "r+b") as fh:
                    fh.truncate(offset)
        self._index[dataset] = (offset, ids)
        return ids

    def stored_ids(self, dataset: str) -> set[str]:
        """image_ids that have a manifest row (and hence an image) in ``dataset``."""
        with self._locked(dataset):
            return set(self._refresh_index(dataset, repair=True))

    def has(self, dataset: str, image_id: str) -> bool:
        return image_id in self.stored_ids(dataset)

    def write_image(self, dataset: str, record: ImageRecord, image: Image.Image) -> bool:
        """Store ``image`` and its row atomically; False (and nothing written) when already stored."""
        rel = self.relative_path(dataset, record.class_name, record.image_id)
        record = record.model_copy(update={"dataset": dataset, "path": rel})
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        stem = f".{record.image_id}.png."
        temp = target.parent / f"{stem}{uuid.uuid4().hex}{TEMP_SUFFIX}"
        # Encode outside the lock so concurrent workers only serialise on the tiny commit.
        with open(temp, "wb") as fh:
            image.save(fh, format="PNG")
            fh.flush()
            os.fsync(fh.fileno())
        line = (json.dumps(record.model_dump(), sort_keys=True, allow_nan=True) + "\n").encode()
        with self._locked(dataset):
            ids = self._refresh_index(dataset, repair=True)
            if record.image_id in ids:
                temp.unlink(missing_ok=True)
                return False
            os.replace(temp, target)
            _fsync_dir(target.parent)  # the rename is durable before a row can point at it
            fd = os.open(self.manifest_path(dataset), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            ids.add(record.image_id)
            offset, _ = self._index[dataset]
            self._index[dataset] = (offset + len(line), ids)
            # Temp files of this image left by writers that were killed mid-write.
            for stale in target.parent.glob(f"{stem}*{TEMP_SUFFIX}"):
                stale.unlink(missing_ok=True)
        return True

    # -- reading -------------------------------------------------------------------------
    def records(self, dataset: str) -> list[ImageRecord]:
        """Manifest rows in write order; a torn last line (a killed writer) is ignored."""
        manifest = self.manifest_path(dataset)
        if not manifest.exists():
            return []
        rows, _, _ = _parse_manifest(manifest.read_bytes())
        seen: set[str] = set()
        out = []
        for row in rows:
            if row["image_id"] not in seen:
                seen.add(row["image_id"])
                out.append(ImageRecord.model_validate(row))
        return out

    def datasets(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / MANIFEST).is_file())

    def verify(self, dataset: str) -> VerifyReport:
        """Compare the folder with the manifest: missing images, orphan images, duplicates, temp files."""
        directory = self.dataset_dir(dataset)
        manifest = directory / MANIFEST
        rows, _, torn = _parse_manifest(manifest.read_bytes()) if manifest.exists() else ([], 0, False)
        ids = [r["image_id"] for r in rows]
        counts: dict[str, int] = {}
        for i in ids:
            counts[i] = counts.get(i, 0) + 1
        paths = {r["path"] for r in rows}
        pngs = {p.relative_to(self.root).as_posix() for p in directory.glob("*/*.png") if not p.name.startswith(".")}
        return VerifyReport(
            dataset=dataset,
            n_records=len(counts),
            n_images=len(pngs),
            missing=sorted(p for p in paths if not (self.root / p).is_file()),
            orphans=sorted(pngs - paths),
            duplicates=sorted(i for i, n in counts.items() if n > 1),
            temp_files=sorted(p.relative_to(self.root).as_posix() for p in directory.glob(f"*/.*{TEMP_SUFFIX}")),
            torn_tail=torn,
        )


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
