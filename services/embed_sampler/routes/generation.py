"""Routes that queue decoding of outlier vectors into images, and report on the queue.

``POST /generate`` checks everything before it enqueues anything: a request
that fails any check leaves the queue untouched. The work is split into RQ
jobs of ``images_per_job`` images (see ``oodsynth.queue``).
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import pydantic
import redis
from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, field_validator

from oodsynth import queue as rq_queue
from oodsynth.config import get_settings
from oodsynth.jobs import (
    DecodeJob,
    DecodeSettings,
    build_items,
    dataset_name_field,
    inline_vector_ids,
    job_from_sample,
    rescale_to_anchors,
)
from oodsynth.registry import FitRegistry, SampleRegistry

from ..errors import field_error, from_pydantic, not_found
from ..state import get_fits, get_redis_dep, get_samples

router = APIRouter(tags=["generation"])

ERROR_RESPONSES = {
    404: {"description": "Unknown sample, fit or job id."},
    422: {"description": "Bad input; `detail[].loc` names the field. Nothing was enqueued."},
}


MAX_CLASS_INDEX = 2**31
# Inline vectors are rescaled to their anchor's norm, so only their direction matters; a norm
# outside this range is a unit or serialisation mistake, not a direction worth decoding.
MIN_INLINE_NORM, MAX_INLINE_NORM = 1e-6, 1e6


class GenerateRequest(DecodeSettings):
    """Decode a stored sample (``sample_id``) or inline ``vectors`` + ``classes`` into images."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"sample_id": "3f2a...", "dataset": "cifar100-outliers", "images_per_vector": 1}]},
    )

    dataset: str = Field(description="Result-store dataset (one folder name) the images go into.")
    sample_id: str | None = Field(None, description="A sample returned by POST /sample.")
    vectors: list[list[float]] | None = Field(
        None, description="Inline vectors (M, D), instead of sample_id; need `fit`, and are rescaled to ||T(y)||."
    )
    classes: list[Annotated[int, Field(ge=0, lt=MAX_CLASS_INDEX)]] | None = Field(
        None, description="Class index of each inline vector (a class of `fit`)."
    )
    fit: str | None = Field(
        None, description="Fit of the inline vectors (required with them): class names, dimension, anchor norms."
    )
    images_per_vector: int = Field(1, ge=1, description="Images decoded from each vector, each with its own seed.")
    seed: int | None = Field(None, ge=0, description="Base seed; each image's seed derives from it and its id.")

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return dataset_name_field(v)


class GenerateResponse(BaseModel):
    dataset: str
    job_ids: list[str]
    n_images: int


class Progress(BaseModel):
    done: int
    total: int


class JobState(BaseModel):
    id: str
    status: str = Field(description="queued, started, deferred, scheduled, finished, failed, stopped or canceled.")
    progress: Progress
    result: Any = Field(None, description='When finished: {"images": [paths relative to the store], ...}.')
    error: str | None = Field(None, description="Text of the latest failure (RQ's failed registry).")
    dataset: str | None = None
    retries_left: int | None = None


def _inline_arrays(req: GenerateRequest, fits: FitRegistry):
    """Vectors, classes, class names and vector ids of an inline request, checked field by field.

    Inline vectors need a ``fit``: it gives the class names, the dimension the
    vectors must have and the anchor norms ||T(y)|| they are rescaled to.
    """
    if req.classes is None:
        raise field_error(["body", "classes"], "give one class index per vector")
    if len(req.vectors) == 0:
        raise field_error(["body", "vectors"], "give at least one vector")
    if len(req.classes) != len(req.vectors):
        raise field_error(["body", "classes"], f"expected {len(req.vectors)} class indices (one per vector), got {len(req.classes)}")
    dims = {len(v) for v in req.vectors}
    if len(dims) != 1 or 0 in dims:
        raise field_error(["body", "vectors"], f"rows must be non-empty and of one dimension, got dimensions {sorted(dims)}")
    vectors = np.asarray(req.vectors, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if bad.size:
        raise field_error(["body", "vectors", int(bad[0])], f"{bad.size} vectors contain NaN or inf (first: row {int(bad[0])})")
    with np.errstate(over="ignore"):
        norms = np.linalg.norm(vectors, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms < MIN_INLINE_NORM) | (norms > MAX_INLINE_NORM))
    if bad.size:
        raise field_error(
            ["body", "vectors", int(bad[0])],
            f"{bad.size} vectors have a norm outside [{MIN_INLINE_NORM:g}, {MAX_INLINE_NORM:g}] "
            f"(first: row {int(bad[0])}, norm {float(norms[bad[0]]):.3g})",
        )
    if req.fit is None:
        raise field_error(["body", "fit"], "inline vectors need a fit: it names the classes, fixes the dimension "
                          "and gives the anchor norms the vectors are rescaled to")
    try:
        fit, _bank = fits.get(req.fit)
    except KeyError:
        raise not_found(["body", "fit"], f"no fit named {req.fit!r}") from None
    if vectors.shape[1] != fit.dim:
        raise field_error(["body", "vectors"], f"dimension {vectors.shape[1]} does not match fit {req.fit!r} ({fit.dim})")
    names = list(fit.class_names_)
    classes = np.asarray(req.classes, dtype=np.int64)  # each in [0, 2**31) by the schema
    out = np.flatnonzero(classes >= len(names))
    if out.size:
        raise field_error(["body", "classes", int(out[0])], f"class index {int(classes[out[0]])} is out of range [0, {len(names)}) of fit {req.fit!r}")
    try:
        vectors = rescale_to_anchors(vectors, classes, fit.anchors_)
    except ValueError as exc:
        raise field_error(["body", "vectors"], str(exc).removeprefix("vectors: ")) from None
    if not np.isfinite(vectors).all():
        raise field_error(["body", "vectors"], "rescaling to the anchor norms gave non-finite values")
    return vectors, classes, names, inline_vector_ids(vectors, classes)


def plan_job(req: GenerateRequest, fits: FitRegistry, samples: SampleRegistry) -> DecodeJob:
    """The whole request as one validated ``DecodeJob`` (split into RQ jobs when enqueued)."""
    settings = get_settings()
    if (req.sample_id is None) == (req.vectors is None):
        raise field_error(["body", "sample_id"], "give either sample_id or vectors (+ classes), not both or neither")
    if req.sample_id is not None:
        for name in ("classes", "fit"):
            if getattr(req, name) is not None:
                raise field_error(["body", name], "only used with inline vectors; a stored sample carries its own")
        try:
            sample = samples.get(req.sample_id)
        except KeyError:
            raise not_found(["body", "sample_id"], f"no sample {req.sample_id!r} (unknown or expired)") from None
        n_vectors = len(sample.vectors)
        if n_vectors == 0:
            raise field_error(["body", "sample_id"], "the sample holds no vectors")
    else:
        vectors, classes, names, vector_ids = _inline_arrays(req, fits)
        n_vectors = len(vectors)
    n_images = n_vectors * req.images_per_vector
    if n_images > settings.max_images_per_request:
        raise field_error(
            ["body", "images_per_vector"],
            f"{n_vectors} vectors x {req.images_per_vector} images = {n_images} images, "
            f"over the limit of {settings.max_images_per_request} per request",
        )
    try:
        if req.sample_id is not None:
            return job_from_sample(
                sample, dataset=req.dataset, model=settings.model, decode=req,
                images_per_vector=req.images_per_vector, seed=req.seed,
            )
        items = build_items(
            dataset=req.dataset, vectors=vectors, class_index=classes, class_names=names, vector_ids=vector_ids,
            sampler="inline", images_per_vector=req.images_per_vector, seed=req.seed,
            decode=req.decode_settings(), model=settings.model,
        )
        return DecodeJob(dataset=req.dataset, model=settings.model, items=items, **req.decode_settings())
    except pydantic.ValidationError as exc:  # e.g. a stored sample with non-finite vectors
        raise from_pydantic(exc, ["body"]) from exc


@router.post(
    "/generate",
    status_code=202,
    response_model=GenerateResponse,
    responses=ERROR_RESPONSES,
    summary="Queue decoding of outlier vectors into images",
)
async def generate(
    req: GenerateRequest,
    fits: FitRegistry = Depends(get_fits),
    samples: SampleRegistry = Depends(get_samples),
    connection: redis.Redis = Depends(get_redis_dep),
):
    """Every image gets its own vector, seed and stable id, so a retried job rewrites the same files.

    Follow the returned jobs with `GET /jobs/{id}`; images land in the result
    store under `<dataset>/<class>/<image_id>.png` with a manifest row each.
    """
    job = await run_in_threadpool(plan_job, req, fits, samples)
    job_ids = await run_in_threadpool(rq_queue.enqueue_decode, job, connection)
    return GenerateResponse(dataset=req.dataset, job_ids=job_ids, n_images=len(job.items))


@router.get("/jobs/{job_id}", response_model=JobState, responses=ERROR_RESPONSES, summary="State of one job")
async def get_job(job_id: str, connection: redis.Redis = Depends(get_redis_dep)):
    """Status, images done of total, the result (image paths) and the latest error text."""
    try:
        return await run_in_threadpool(rq_queue.job_status, job_id, connection)
    except KeyError:
        raise not_found(["path", "job_id"], f"no job {job_id!r} (unknown or expired)") from None


@router.get("/queue", summary="Queue depth per registry and the live workers")
async def get_queue_stats(connection: redis.Redis = Depends(get_redis_dep)) -> dict:
    """Per queue: queued/started/finished/failed/deferred/scheduled counts; workers with their current job."""
    return await run_in_threadpool(rq_queue.queue_stats, connection)
