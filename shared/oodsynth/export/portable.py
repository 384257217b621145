"""Names that mean the same on another machine: no export carries an absolute path of the machine that wrote it.

The manifest's ``model`` is whatever ``OODSYNTH_MODEL`` was: a hub id (kept), a hub cache snapshot folder (named
by its hub id and revision), or a local folder (named by its folder name and a hash of its files' content, so two
exports from the same weights say the same thing). Any other string that is an absolute path keeps its last part.
"""

from __future__ import annotations

import hashlib
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

# ``.../models--org--name/snapshots/<revision>[/...]``: the huggingface_hub cache layout.
HUB_CACHE = re.compile(r"(?:^|[/\\])models--(?P<repo>[^/\\]+)[/\\]snapshots[/\\](?P<revision>[0-9a-f]{6,64})")
HASH_CHARS = 16


def is_local_path(text: str) -> bool:
    """An absolute path, a home-relative one, or a path that exists here (hub ids ``org/name`` do not)."""
    if os.path.isabs(text) or text.startswith(("~", "./", "../")) or re.match(r"^[A-Za-z]:[\\/]", text):
        return True
    return "/" in text and Path(text).exists()


@lru_cache(maxsize=64)
def content_hash(folder: str) -> str:
    """sha256 over the folder's files (relative name and bytes, in sorted order), its first hex digits."""
    root = Path(folder).expanduser()
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() if root.is_dir() else path.name.encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:HASH_CHARS]


def portable_model(model: str) -> str:
    """The model as another machine can name it: ``org/name``, ``org/name@revision`` or ``name@sha256:<hash>``."""
    if not is_local_path(model):
        return model
    if found := HUB_CACHE.search(model):
        return f"{found['repo'].replace('--', '/')}@{found['revision']}"
    path = Path(model).expanduser()
    name = path.name or "model"
    if path.exists():
        return f"{name}@sha256:{content_hash(str(path.resolve()))}"
    return f"{name} (local folder, absent at export: no content hash)"


def portable_value(value: Any) -> Any:
    """Strings that are absolute paths become their last part; dicts and lists are walked."""
    if isinstance(value, str):
        return Path(value).name if is_local_path(value) and os.path.isabs(os.path.expanduser(value)) else value
    if isinstance(value, dict):
        return {k: portable_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_value(v) for v in value]
    return value


def portable_row(row: dict[str, Any]) -> dict[str, Any]:
    """A manifest row with its model named portably and no absolute path left in it."""
    return {k: portable_model(v) if k == "model" else portable_value(v) for k, v in row.items()}


def portable_store(url: str) -> str:
    """The store as the card names it: an ``s3://`` URL as given, a local folder by its name only."""
    return url if "://" in url else f"{Path(url).name} (a local folder)"
