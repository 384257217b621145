"""The init images of an img2img job, read from the result store.

The API picked each item's image (``oodsynth.service.generation.assign_init_images``) and the payload
carries its store path; the worker reads only images of the job's own init dataset, so a payload written
straight to Redis cannot make it read (and publish, barely noised) another file of the store.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from ..queue.payloads import DecodeItem, DecodeJob
from ..store.results import ResultStore


def init_image_path(dataset: str, item: DecodeItem) -> str:
    """The item's init image path, checked to be ``<dataset>/<class folder>/<file>.png`` (nothing else)."""
    path = item.init_image
    parts = (path or "").split("/")
    if (
        path is None
        or len(parts) != 3
        or parts[0] != dataset
        or any(p in ("", ".", "..") or "\\" in p for p in parts)
        or not parts[2].endswith(".png")
    ):
        raise InputError(
            "items",
            f"image {item.image_id}: init_image {path!r} is not an image of init dataset {dataset!r}",
        )
    return path


def load_init_images(job: DecodeJob, batch: Sequence[DecodeItem], store: ResultStore) -> list[Image.Image] | None:
    """The batch's init images in item order (RGB), or None for a text-to-image job.

    A missing or unreadable image is an ``InputError`` (the job cannot succeed by retrying); a store that
    cannot be reached raises its own error, and RQ retries.
    """
    if job.init_images is None:
        stray = next((item for item in batch if item.init_image is not None), None)
        if stray is not None:
            raise InputError("items", f"image {stray.image_id}: init_image without the job's init_images")
        return None
    images = []
    for item in batch:
        path = init_image_path(job.init_images.dataset, item)
        try:
            data = store.read_bytes(path)
        except FileNotFoundError:
            raise InputError("init_images", f"init image {path} is not in the result store") from None
        try:
            with Image.open(io.BytesIO(data)) as image:
                images.append(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:  # the bytes are here: decoding them again will not help
            raise InputError("init_images", f"init image {path} cannot be read as an image ({exc})") from None
    return images
