"""``POST /features``: images -> unit-norm encoder features and the nearest-anchor class.

Available when the API is started with ``OODSYNTH_ENCODER_CHECKPOINT``; the
checkpoint is loaded once per process (and again only if the file changes),
not per request. Without it the route answers 503 saying how to enable it.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, UploadFile
from fastapi.concurrency import run_in_threadpool
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field

from oodsynth.config import get_settings
from oodsynth.features import ImageEmbedder

from ..errors import APIError, error, field_error

router = APIRouter(tags=["features"])

MAX_IMAGES = 256
MAX_PIXELS = 4096 * 4096  # per upload; the encoder resizes to a few dozen pixels anyway

_lock = threading.Lock()
_cache: dict[tuple[str, float], ImageEmbedder] = {}


class ImageFeatures(BaseModel):
    filename: str | None
    features: list[float] = Field(description="h(x)/||h(x)||, the anchor-space feature.")
    class_index: int = Field(description="Index of the most cosine-similar anchor.")
    class_name: str
    cosine: float = Field(description="Cosine between the feature and that anchor.")


class FeaturesResponse(BaseModel):
    dim: int
    class_names: list[str]
    items: list[ImageFeatures]


def get_embedder() -> ImageEmbedder:
    """The configured encoder, loaded once per (path, mtime)."""
    path = get_settings().encoder_checkpoint
    if path is None:
        raise APIError(503, [error(["encoder_checkpoint"], "POST /features needs an encoder: start the API with "
                                   "OODSYNTH_ENCODER_CHECKPOINT=<path to encoder.pt from `oodsynth train-encoder`>",
                                   "service_unavailable")])
    path = Path(path)
    file = path / "encoder.pt" if path.is_dir() else path
    if not file.is_file():
        raise APIError(503, [error(["encoder_checkpoint"], f"encoder checkpoint {file} does not exist",
                                   "service_unavailable")])
    key = (str(file.resolve()), file.stat().st_mtime)
    with _lock:
        if key not in _cache:
            _cache.clear()
            try:
                _cache[key] = ImageEmbedder(file, device=get_settings().device)
            except ValueError as exc:
                raise APIError(503, [error(["encoder_checkpoint"], str(exc), "service_unavailable")]) from None
        return _cache[key]


@router.post(
    "/features",
    response_model=FeaturesResponse,
    responses={422: {"description": "A file is not an image; `loc` names it."},
               503: {"description": "No encoder checkpoint configured."}},
    summary="Encode images into the anchor space",
)
async def features(
    files: Annotated[list[UploadFile], File(description=f"Images (PNG, JPEG, ...), 1 to {MAX_IMAGES}.")],
) -> FeaturesResponse:
    """Resize each image to the encoder's input size and return its unit-norm feature and nearest anchor."""
    embedder = await run_in_threadpool(get_embedder)
    if not 1 <= len(files) <= MAX_IMAGES:
        raise field_error(["body", "files"], f"send 1 to {MAX_IMAGES} images, got {len(files)}")
    images = []
    for i, upload in enumerate(files):
        data = await upload.read()
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > MAX_PIXELS:  # checked on the header, before decoding the pixels
                    raise field_error(["body", "files", i], f"{upload.filename or 'file'} has "
                                      f"{im.width}x{im.height} pixels, above the cap of {MAX_PIXELS}")
                images.append(im.convert("RGB"))
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise field_error(["body", "files", i], f"{upload.filename or 'file'} is not a readable image ({exc})")
    out = await run_in_threadpool(embedder.embed, images)
    names = embedder.class_names
    items = [
        ImageFeatures(filename=f.filename, features=out["features"][i].tolist(), class_index=int(out["class_index"][i]),
                      class_name=names[int(out["class_index"][i])], cosine=float(out["cosine"][i]))
        for i, f in enumerate(files)
    ]
    return FeaturesResponse(dim=int(out["features"].shape[1]), class_names=names, items=items)
