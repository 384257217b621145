"""``POST /features``: images -> unit-norm encoder features and the nearest-anchor class.

Available when the API is started with ``OODSYNTH_ENCODER_CHECKPOINT``; the
checkpoint is loaded once per process (``app.state.embedders``, again only if
the file changes), not per request. Without it the route answers 503 saying how to enable it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from oodsynth.config import Settings
from oodsynth.service import embed_uploads
from oodsynth.service.features import MAX_IMAGES

from ..auth import WRITE
from ..limits import HEAVY
from ..state import get_settings_dep

router = APIRouter(tags=["features"])


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


@router.post(
    "/features",
    dependencies=[WRITE, HEAVY],
    response_model=FeaturesResponse,
    responses={
        422: {"description": "A file is not an image; `loc` names it."},
        503: {"description": "No encoder checkpoint configured."},
    },
    summary="Encode images into the anchor space",
)
async def features(
    request: Request,
    files: Annotated[
        list[UploadFile],
        File(min_length=1, max_length=MAX_IMAGES, description=f"Images (PNG, JPEG, ...), 1 to {MAX_IMAGES}."),
    ],
    settings: Settings = Depends(get_settings_dep),
) -> dict:  # a FeaturesResponse (response_model) as embed_uploads' dict
    """Resize each image to the encoder's input size and return its unit-norm feature and nearest anchor."""
    embedder = await run_in_threadpool(request.app.state.embedders.get, settings)
    uploads = [(f.filename, await f.read()) for f in files]
    return await run_in_threadpool(embed_uploads, embedder, uploads)
