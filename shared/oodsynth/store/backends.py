"""Where the result store's bytes live: a local folder or an S3 bucket, behind one small interface.

``ResultStore`` (store.py) decides *what* to write; a backend only knows how to
put, read and list objects under the store root atomically:

* ``put`` replaces an object whole (readers see the old or the new bytes);
* ``put_new`` creates an object only if it does not exist yet, so two writers
  of one image cannot both think they created it;
* ``lock`` serialises writers of one dataset where the medium can (a local
  ``flock``); an object store cannot lock, and ``put_new`` is what keeps it exact.

S3 goes through fsspec + s3fs rather than obstore: fsspec is already installed
with torch, its filesystem instances are cached per process id (a torch
``DataLoader`` worker forked from a trainer gets its own S3 session instead of
the parent's event loop), and s3fs exposes S3's conditional ``If-None-Match``
create (``mode="create"``) and user metadata, which the exactly-once rule needs.
Endpoint and credentials come from the standard ``AWS_*`` variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``), so the
same settings work for MinIO, moto and AWS, or from ``storage_options``.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import glob
import logging
import math
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from ..config import is_url, normalise_url
from ..errors import Unavailable

log = logging.getLogger("oodsynth.store")
F = TypeVar("F", bound=Callable[..., Any])

TEMP_SUFFIX = ".tmp"
LOCK = ".manifest.lock"


class Backend(Protocol):
    url: str

    @property
    def root(self) -> Path | str: ...  # read-only here: a Path for a folder, the URL for a bucket

    def read(self, key: str) -> bytes | None: ...
    def put(self, key: str, data: bytes) -> None: ...
    def put_new(self, key: str, data: bytes, owner: str) -> bool: ...
    def owner_and_age(self, key: str) -> tuple[str | None, float]: ...
    def versions(self, folder: str) -> dict[str, str]: ...
    def children(self, folder: str) -> list[str]: ...
    def walk(self, folder: str) -> list[str]: ...
    def lock(self, dataset: str) -> ContextManager[None]: ...


STORE_RETRY_AFTER_S = 30


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What a store that cannot be reached raises: OS errors, and botocore's and aiohttp's own (S3)."""
    errors: list[type[BaseException]] = [OSError, TimeoutError]
    try:
        import aiohttp
        import botocore.exceptions as boto  # type: ignore[import-untyped]  # botocore ships no stubs

        errors += [boto.BotoCoreError, boto.ClientError, aiohttp.ClientError]
    except ImportError:  # no s3 extra: a local store only
        pass
    return tuple(errors)


def unavailable_on_failure(method: F) -> F:
    """A backend call that fails for any reason but "no such object" is ``Unavailable`` (the API's 503 with
    Retry-After), naming the store: an unreachable endpoint or a full or read-only disk is not the caller's
    fault, and must not read as a 500."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (FileNotFoundError, FileExistsError):
            raise
        except _transport_errors() as exc:
            log.warning("result store %s: %s: %s", self.url, type(exc).__name__, exc)
            error = Unavailable("store", f"the result store cannot be used now ({type(exc).__name__}); retry later")
            error.headers = {"Retry-After": str(STORE_RETRY_AFTER_S)}
            raise error from exc

    return cast(F, call)


def open_backend(root: str | os.PathLike, storage_options: dict | None = None) -> Backend:
    """The backend for a store root: ``s3://...`` -> S3, anything else -> a local folder."""
    if isinstance(root, str) and is_url(root):
        return S3Backend(normalise_url(root), storage_options)
    return LocalBackend(Path(root))


class LocalBackend:
    """A folder. Writes go to a temp file beside the target, are fsync-ed, then renamed into place."""

    def __init__(self, root: Path):
        self.root = root
        self.url = str(root)

    def _path(self, key: str) -> Path:
        return self.root / key

    @unavailable_on_failure
    def read(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:  # a name no file system holds names nothing
                return None
            raise

    def _write_temp(self, target: Path, data: bytes) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.parent / f".{target.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
        with open(temp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return temp

    def _publish(self, temp: Path, target: Path) -> None:
        os.replace(temp, target)
        _fsync_dir(target.parent)  # the rename is durable before anything can point at it
        _remove_stale_temps(target)

    @unavailable_on_failure
    def put(self, key: str, data: bytes) -> None:
        target = self._path(key)
        self._publish(self._write_temp(target, data), target)

    @unavailable_on_failure
    def put_new(self, key: str, data: bytes, owner: str) -> bool:
        """Create ``key`` unless it exists. Exact only under ``lock`` (the caller holds it)."""
        target = self._path(key)
        temp = self._write_temp(target, data)
        if target.exists():
            temp.unlink(missing_ok=True)
            _remove_stale_temps(target)
            return False
        self._publish(temp, target)
        return True

    @unavailable_on_failure
    def owner_and_age(self, key: str) -> tuple[str | None, float]:
        """No owner is recorded locally; under the lock a creator always commits its row before
        releasing it, so an existing image without a row was abandoned: report it as infinitely old."""
        return None, math.inf

    @unavailable_on_failure
    def versions(self, folder: str) -> dict[str, str]:
        """Files directly in ``folder`` (no dot-files) -> a token that changes when the file changes."""
        try:
            entries = list(os.scandir(self._path(folder)))
        except (FileNotFoundError, NotADirectoryError):
            return {}
        out = {}
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            st = entry.stat()
            out[entry.name] = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
        return out

    @unavailable_on_failure
    def children(self, folder: str) -> list[str]:
        path = self._path(folder) if folder else self.root
        try:
            return sorted(p.name for p in path.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []

    @unavailable_on_failure
    def walk(self, folder: str) -> list[str]:
        base = self._path(folder)
        out: list[str] = []
        for dirpath, _, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            out.extend(f"{rel}/{name}" for name in files)
        return out

    @contextmanager
    def lock(self, dataset: str) -> Iterator[None]:
        directory = self._path(dataset)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


class S3Backend:
    """``s3://bucket/prefix``. A PUT is atomic (an object appears whole or not at all)."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = self.root = url
        self._base = url.removeprefix("s3://")
        # Listings are re-read every time: other hosts write shards all the time.
        self._options = {"use_listings_cache": False, **(storage_options or {})}

    @property
    def fs(self):
        import fsspec  # fsspec caches the instance per process id: cheap, and safe across fork

        return fsspec.filesystem("s3", **self._options)

    def _path(self, key: str) -> str:
        return f"{self._base}/{key}" if key else self._base

    @unavailable_on_failure
    def read(self, key: str) -> bytes | None:
        try:
            return self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            return None

    @unavailable_on_failure
    def put(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(key), data)

    @unavailable_on_failure
    def put_new(self, key: str, data: bytes, owner: str) -> bool:
        """A conditional PUT (``If-None-Match: *``): S3 itself decides which writer created it."""
        try:
            self.fs.pipe_file(self._path(key), data, mode="create", Metadata={"writer": owner})
        except FileExistsError:
            return False
        return True

    @unavailable_on_failure
    def owner_and_age(self, key: str) -> tuple[str | None, float]:
        path = self._path(key)
        owner = self.fs.metadata(path).get("writer")
        modified = self.fs.info(path)["LastModified"]
        return owner, (datetime.now(UTC) - modified).total_seconds()

    @unavailable_on_failure
    def versions(self, folder: str) -> dict[str, str]:
        try:
            entries = self.fs.ls(self._path(folder), detail=True)
        except FileNotFoundError:
            return {}
        return {
            e["name"].rsplit("/", 1)[-1]: str(e.get("ETag") or e.get("size"))
            for e in entries
            if e["type"] == "file" and not e["name"].rsplit("/", 1)[-1].startswith(".")
        }

    @unavailable_on_failure
    def children(self, folder: str) -> list[str]:
        try:
            return sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(self._path(folder), detail=False))
        except FileNotFoundError:
            return []

    @unavailable_on_failure
    def walk(self, folder: str) -> list[str]:
        prefix = self._base + "/"
        return [p.removeprefix(prefix) for p in self.fs.find(self._path(folder))]

    def lock(self, dataset: str) -> ContextManager[None]:
        return nullcontext()  # no locks in S3: put_new's conditional create keeps writes exact


def _remove_stale_temps(target: Path) -> None:
    """Temp files of ``target`` left by writers that were killed mid-write (the caller holds the lock)."""
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*{TEMP_SUFFIX}"):
        stale.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
