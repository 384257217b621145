"""How images are named and seeded.

Image ids and seeds are derived from what the image *is* (dataset, vector id,
repeat index, request seed, decode settings and model), never from time or
position in the queue, so a retried or re-submitted job reproduces the same
files and the store can skip images it already holds, while a request with a
new seed or new decode settings names new images instead of being skipped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def image_id_for(
    dataset: str,
    vector_id: str,
    repeat: int,
    *,
    seed: int | None = None,
    decode: Mapping[str, Any] | None = None,
    model: str | None = None,
) -> str:
    """Stable id of the ``repeat``-th image of a vector in a dataset.

    The base ``seed``, the ``decode`` settings (prompt template, steps,
    guidance, size, output size, scheduler) and the ``model`` are part of the
    id: the same request repeated names the same images (idempotent retries),
    a request that would draw different pixels names different ones.
    """
    return recipe_image_id(dataset, vector_id, repeat, image_recipe(seed, decode, model))


def image_recipe(seed: int | None, decode: Mapping[str, Any] | None, model: str | None) -> str:
    """The part of an image id shared by every image of a request (computed once per request)."""
    return json.dumps(
        {"seed": seed, "decode": dict(decode) if decode is not None else None, "model": model},
        sort_keys=True,
        separators=(",", ":"),
    )


def recipe_image_id(dataset: str, vector_id: str, repeat: int, recipe: str) -> str:
    digest = hashlib.sha256(f"{dataset}\x1f{vector_id}\x1f{repeat}\x1f{recipe}".encode()).hexdigest()[:20]
    return f"img-{digest}"


def image_seed_for(image_id: str, base_seed: int | None) -> int:
    """Per-image diffusion seed (63-bit), reproducible from the image id and the request seed."""
    digest = hashlib.sha256(f"{image_id}\x1f{base_seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
