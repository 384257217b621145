"""Result store: ``<root>/<dataset>/<class>/<image_id>.png`` plus a manifest sharded per job.

The root is a local folder or an ``s3://bucket/prefix`` URL (``store_backends``).
Many workers on many hosts write into one store at once, and RQ retries jobs
after a worker dies, so every write is atomic and idempotent:

* the PNG is created only if it does not exist yet (``put_new``: a temp file +
  rename under a ``flock`` locally, a conditional ``If-None-Match`` PUT on S3),
  so of two writers of one image exactly one creates it;
* the image's row then goes into the manifest shard of its job,
  ``<dataset>/manifest/<job_id>.jsonl``, which that job alone writes, whole
  (read, merged with the new rows, replaced): workers never contend for one
  file, and a retried job rewrites its own shard;
* an image whose creator died before writing its row is adopted by the next
  writer of that image: the same job's retry (S3 records the creating shard in
  the object's metadata) or, once ``ADOPT_AFTER_S`` have passed, anyone
  (locally at once: under the lock a live creator has always written its row);
* readers merge the shards, plus a ``<dataset>/manifest.jsonl`` from older
  versions of this store (read as it is, never migrated or appended to), and
  keep the first row of each image.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel, Field

from ..names import RESERVED_NAMES, component_fits, normalize_name, validate_name
from .backends import LOCK, TEMP_SUFFIX, Backend, open_backend

LEGACY_MANIFEST = "manifest.jsonl"  # a single append-only manifest file: read, never written
SHARDS = "manifest"  # <dataset>/manifest/<shard>.jsonl
SHARD_SUFFIX = ".jsonl"
# An image without a row, created by another writer, is adopted after this long: far more than
# the one PUT between an image and its row, so a live writer is never raced for its own row.
ADOPT_AFTER_S = 600.0

# The store's own entries in a dataset folder are names no dataset, class or fit may take.
assert {SHARDS, LEGACY_MANIFEST} <= RESERVED_NAMES

_UNSAFE = re.compile(r"[\\/\x00]")
# Per process: (store url, dataset) -> manifest object key -> (version token, image_ids in it).
_ID_CACHE: dict[tuple[str, str], dict[str, tuple[str, frozenset[str]]]] = {}
_ID_CACHE_LOCK = threading.Lock()
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")

__all__ = ["ImageRecord", "ResultStore", "VerifyReport", "class_folder", "validate_dataset_name", "LOCK", "TEMP_SUFFIX"]


def validate_dataset_name(name: str) -> str:
    """A dataset name follows the one naming rule (``names.validate_name``); it is one folder."""
    return validate_name("dataset", name)


def class_folder(class_name: str) -> str:
    """Folder name for a class: separators and unprintable characters replaced (``a/b`` -> ``a_b``)."""
    name = normalize_name(class_name)  # a decomposed spelling of a class writes into its composed folder
    safe = "".join(c if c.isprintable() else "_" for c in _UNSAFE.sub("_", name)).strip() or "_"
    return "_" + safe if safe.startswith(".") else safe


def shard_name(job_id: str | None, writer: str) -> str:
    """The manifest shard a row goes to: its job's, or this store instance's for rows without a job."""
    if job_id is None:
        return f"_{writer}"  # RQ job ids never start with '_': no clash
    if _JOB_ID.match(job_id):
        return job_id
    return "h-" + hashlib.sha256(job_id.encode()).hexdigest()[:32]


def _utcnow() -> str:
    return datetime.now(UTC).isoformat()


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
    decode: dict[str, Any] = Field(
        default_factory=dict
    )  # what decoded it: preset, scheduler, steps run, sizes ({}: older rows)
    job_id: str | None = None
    created_at: str = Field(default_factory=_utcnow)
    # The tenant of the job that wrote the row; None (left out of the row): default's, as every older row.
    tenant: str | None = Field(None, exclude_if=lambda v: v is None)


@dataclass
class VerifyReport:
    """What ``ResultStore.verify`` found; ``ok`` when the images and the merged manifest agree one to one."""

    dataset: str
    n_records: int
    n_images: int
    missing: list[str] = field(default_factory=list)  # rows whose PNG is absent
    orphans: list[str] = field(default_factory=list)  # PNGs (relative paths) without a row
    duplicates: list[str] = field(default_factory=list)  # image_ids with more than one row over all shards
    temp_files: list[str] = field(default_factory=list)  # leftovers of killed writers
    torn_tail: bool = False  # the legacy manifest.jsonl ends in a partial row

    @property
    def ok(self) -> bool:
        return not (self.missing or self.orphans or self.duplicates or self.temp_files or self.torn_tail)


def _parse_rows(data: bytes) -> tuple[list[dict], bool]:
    """Rows of the complete lines, and whether a torn (unterminated) tail follows them."""
    end = data.rfind(b"\n") + 1
    return [json.loads(line) for line in data[:end].splitlines() if line.strip()], end < len(data)


def _row_line(record: ImageRecord) -> str:
    return json.dumps(record.model_dump(), sort_keys=True, allow_nan=True) + "\n"


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class _Shard:
    version: str
    rows: list[dict]
    torn: bool = False


def _ordered_rows(shards: dict[str, _Shard]) -> list[dict]:
    """Every row of ``shards``, duplicates included, in write order."""
    ordered = [
        (row.get("created_at", ""), key, i, row) for key, shard in shards.items() for i, row in enumerate(shard.rows)
    ]
    return [row for *_, row in sorted(ordered, key=lambda t: t[:3])]


class ResultStore:
    """Generated images and their sharded manifests, in a folder or a bucket, safe for many writers."""

    def __init__(self, root: str | os.PathLike, storage_options: dict | None = None):
        self.backend: Backend = open_backend(root, storage_options)
        self.url = self.backend.url
        self.root: Path | str = self.backend.root  # a Path for a local store, the URL for a bucket
        self.writer = uuid.uuid4().hex[:16]  # names this instance's shard for rows without a job
        self._index: dict[str, dict[str, _Shard]] = {}  # dataset -> shard key -> parsed rows

    # -- names and paths ---------------------------------------------------------------
    def manifest_path(self, dataset: str) -> Path | str:
        """The folder of the dataset's manifest shards (one ``<job_id>.jsonl`` per job)."""
        return self._location(f"{validate_dataset_name(dataset)}/{SHARDS}")

    def _location(self, key: str) -> Path | str:
        return self.root / key if isinstance(self.root, Path) else f"{self.url}/{key}"

    def relative_path(self, dataset: str, class_name: str, image_id: str) -> str:
        return f"{validate_dataset_name(dataset)}/{class_folder(class_name)}/{image_id}.png"

    def shard_key(self, dataset: str, job_id: str | None) -> str:
        return f"{validate_dataset_name(dataset)}/{SHARDS}/{shard_name(job_id, self.writer)}{SHARD_SUFFIX}"

    # -- writing -------------------------------------------------------------------------
    def write_image(self, dataset: str, record: ImageRecord, image: Image.Image) -> bool:
        """Store ``image`` and its row; False (and nothing written) when it was already stored."""
        return self.write_images(dataset, [(record, image)])[0]

    def write_images(self, dataset: str, items: Sequence[tuple[ImageRecord, Image.Image]]) -> list[bool]:
        """Store several images, then their rows with one write of each job's shard (e.g. per GPU batch).

        Per item: True when this call stored it (or adopted an abandoned copy), False when it was
        already stored by someone else.
        """
        dataset = validate_dataset_name(dataset)  # NFC: the folder, the lock and every row name one spelling
        prepared = []
        for record, image in items:  # encode outside the lock: writers serialise only on the commit
            rel = self.relative_path(dataset, record.class_name, record.image_id)
            prepared.append((record.model_copy(update={"dataset": dataset, "path": rel}), _png(image)))
        by_shard: dict[str, list[tuple[ImageRecord, bytes]]] = {}
        for record, data in prepared:
            by_shard.setdefault(self.shard_key(dataset, record.job_id), []).append((record, data))
        stored: dict[str, bool] = {}
        with self.backend.lock(dataset):
            for key, group in by_shard.items():
                stored.update(self._commit(dataset, key, group))
        return [stored[record.image_id] for record, _ in prepared]

    def _commit(self, dataset: str, key: str, group: list[tuple[ImageRecord, bytes]]) -> dict[str, bool]:
        """Create the group's images, then rewrite shard ``key`` with its old rows plus the new ones."""
        owner = key.rsplit("/", 1)[-1].removesuffix(SHARD_SUFFIX)
        data = self.backend.read(key) or b""
        kept = data[: data.rfind(b"\n") + 1]  # the shard's complete rows, byte for byte
        known = {row["image_id"] for row in _parse_rows(kept)[0]}
        new_lines: list[str] = []
        result: dict[str, bool] = {}
        for record, png in group:
            if record.image_id in known or record.image_id in result:
                result.setdefault(record.image_id, False)  # this job recorded it already (a retry)
                continue
            created = self.backend.put_new(record.path, png, owner)
            if created or self._abandoned(dataset, record, owner):
                new_lines.append(_row_line(record))
                result[record.image_id] = True
            else:
                result[record.image_id] = False
        if new_lines:
            self.backend.put(key, kept + "".join(new_lines).encode())
        return result

    def _abandoned(self, dataset: str, record: ImageRecord, owner: str) -> bool:
        """An existing image is ours to record if our own earlier attempt made it, or nobody recorded it."""
        creator, age = self.backend.owner_and_age(record.path)
        if creator == owner:
            return True
        return record.image_id not in self.stored_ids(dataset) and age > ADOPT_AFTER_S

    # -- reading -------------------------------------------------------------------------
    def _manifest_versions(self, name: str) -> dict[str, str]:
        """Every manifest object of a dataset (shards and a legacy file) -> its version token."""
        current = {
            f"{name}/{SHARDS}/{n}": v
            for n, v in self.backend.versions(f"{name}/{SHARDS}").items()
            if n.endswith(SHARD_SUFFIX)
        }
        legacy = self.backend.versions(name).get(LEGACY_MANIFEST)
        if legacy is not None:
            current[f"{name}/{LEGACY_MANIFEST}"] = legacy
        return current

    def _refresh(self, dataset: str) -> dict[str, _Shard]:
        """Re-read the shards (and legacy manifest) that changed since this instance last looked."""
        name = validate_dataset_name(dataset)
        cached = self._index.get(name, {})
        current = self._manifest_versions(name)
        fresh: dict[str, _Shard] = {}
        for key, version in current.items():
            if key in cached and cached[key].version == version:
                fresh[key] = cached[key]
                continue
            data = self.backend.read(key)
            if data is None:  # removed between the listing and the read
                continue
            rows, torn = _parse_rows(data)
            fresh[key] = _Shard(version, rows, torn)
        self._index[name] = fresh
        return fresh

    def manifest_rows(self, dataset: str) -> list[dict]:
        """Every row of every shard as stored, duplicates included, in write order."""
        return _ordered_rows(self._refresh(dataset))

    def stored_ids(self, dataset: str) -> set[str]:
        """image_ids that have a manifest row (and hence an image) in ``dataset``.

        A worker asks this once per job, with a new store object each time: the ids of
        every shard it has read are kept per process (``_ID_CACHE``), so a job costs one
        listing plus the shards written since the last job, not a read of every shard.
        """
        name = validate_dataset_name(dataset)
        current = self._manifest_versions(name)
        with _ID_CACHE_LOCK:
            cache = _ID_CACHE.setdefault((self.url, name), {})
            for key in set(cache) - set(current):
                del cache[key]
            stale = [key for key, version in current.items() if cache.get(key, ("",))[0] != version]
        for key in stale:  # read outside the lock; a newer body than its token only costs a re-read later
            data = self.backend.read(key)
            ids = frozenset(row["image_id"] for row in _parse_rows(data)[0]) if data is not None else frozenset()
            with _ID_CACHE_LOCK:
                cache[key] = (current[key], ids)
        with _ID_CACHE_LOCK:
            return set().union(*(ids for _, ids in cache.values()))

    def records(self, dataset: str) -> list[ImageRecord]:
        """The merged manifest: one row per image (its first), in write order."""
        seen: set[str] = set()
        out = []
        for row in self.manifest_rows(dataset):
            if row["image_id"] not in seen:
                seen.add(row["image_id"])
                out.append(ImageRecord.model_validate(row))
        return out

    def datasets(self) -> list[str]:
        """Datasets that have a manifest (sharded or legacy)."""
        out = []
        for name in self.backend.children(""):
            if name.startswith("."):
                continue
            entries = self.backend.children(name)
            if LEGACY_MANIFEST in entries or (SHARDS in entries and self.backend.children(f"{name}/{SHARDS}")):
                out.append(name)
        return out

    def read_bytes(self, path: str) -> bytes:
        """The bytes of a stored file, by its path relative to the root (``ImageRecord.path``).

        A path with a component no file system holds (over 255 bytes) names nothing: FileNotFoundError,
        not the disk's "File name too long" or the bucket's refusal.
        """
        if not all(component_fits(part) for part in path.split("/")):
            raise FileNotFoundError(f"{self.url}/{path[:200]}...")
        data = self.backend.read(path)
        if data is None:
            raise FileNotFoundError(f"{self.url}/{path}")
        return data

    def open_image(self, path: str) -> Image.Image:
        """A stored image, loaded (the file is closed again), by its path relative to the root."""
        with Image.open(io.BytesIO(self.read_bytes(path))) as img:
            img.load()
            return img

    def verify(self, dataset: str) -> VerifyReport:
        """Compare the stored images with the merged manifest: missing, orphans, duplicates, temp files."""
        name = validate_dataset_name(dataset)
        shards = self._refresh(name)
        rows = _ordered_rows(shards)  # the shards just read: no second listing
        counts = Counter(row["image_id"] for row in rows)
        paths = {row["path"] for row in rows}
        files = self.backend.walk(name)
        pngs, temps = set(), []
        for key in files:
            parts = key.split("/")
            base = parts[-1]
            if base.startswith(".") and base.endswith(TEMP_SUFFIX):
                temps.append(key)
            elif len(parts) == 3 and base.endswith(".png") and not base.startswith(".") and parts[1] != SHARDS:
                pngs.add(key)
        return VerifyReport(
            dataset=name,
            n_records=len(counts),
            n_images=len(pngs),
            missing=sorted(paths - set(files)),
            orphans=sorted(pngs - paths),
            duplicates=sorted(i for i, n in counts.items() if n > 1),
            temp_files=sorted(temps),
            torn_tail=any(s.torn for k, s in shards.items() if k.endswith(f"/{LEGACY_MANIFEST}")),
        )
