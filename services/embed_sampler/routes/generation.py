"""Routes that queue decoding of outlier vectors into images, and report on the queue.

``POST /generate`` checks everything before it enqueues anything: a request
that fails any check leaves the queue untouched. The work is split into RQ
jobs of ``images_per_job`` images (see ``oodsynth.queue.enqueue``). Jobs belong to the tenant of the key
that queued them: another tenant's job, fit or sample answers 404 as a missing one, and ``/queue`` names no job,
host or process to a key below admin.
"""

from __future__ import annotations

from typing import Any

import anyio
import redis
from anyio.lowlevel import RunVar
from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from oodsynth.api_keys import KeyGrant
from oodsynth.config import Settings
from oodsynth.queue import enqueue as rq_queue
from oodsynth.service import GenerateRequest, enqueue_generation, plan_generation
from oodsynth.state.fits import FitRegistry
from oodsynth.state.samples import SampleRegistry

from ..auth import READ, WRITE
from ..body import OffLoopBodyRoute
from ..state import get_fits, get_redis_dep, get_samples, get_settings_dep

router = APIRouter(tags=["generation"], route_class=OffLoopBodyRoute)  # large JSON bodies parsed off the loop

ENQUEUE_THREADS = 2
_enqueue_limiter_var: RunVar[anyio.CapacityLimiter] = RunVar("oodsynth_enqueue_limiter")


def _enqueue_limiter() -> anyio.CapacityLimiter:
    """At most ENQUEUE_THREADS plan-and-enqueue calls run at once; the rest wait for a thread.

    The work is short and GIL-bound, so 20 threads contending for the GIL only add switching: two threads measured
    less API CPU per request and a lower p99 at 20 concurrent clients (bench/results/load/load_generate.md). One
    limiter per event loop, as anyio's own.
    """
    try:
        return _enqueue_limiter_var.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(ENQUEUE_THREADS)
        _enqueue_limiter_var.set(limiter)
        return limiter


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown sample, fit or job id."},
    422: {"description": "Bad input; `detail[].loc` names the field. Nothing was enqueued."},
}


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


@router.post(
    "/generate",
    status_code=202,
    dependencies=[WRITE],
    response_model=GenerateResponse,
    responses=ERROR_RESPONSES,
    summary="Queue decoding of outlier vectors into images",
)
async def generate(
    req: GenerateRequest,
    fits: FitRegistry = Depends(get_fits),
    samples: SampleRegistry = Depends(get_samples),
    connection: redis.Redis = Depends(get_redis_dep),
    settings: Settings = Depends(get_settings_dep),
    caller: KeyGrant = WRITE,
):
    """Every image gets its own vector, seed and stable id, so a retried job rewrites the same files.

    Follow the returned jobs with `GET /jobs/{id}`; images land in the result
    store under `<dataset>/<class>/<image_id>.png` with a manifest row each.

    With `init_images: {"dataset": NAME}` each image starts from a real image of its
    class stored in that dataset (picked by the image's seed), noised to `strength`
    (img2img, SDEdit); its manifest row's `decode` records `init_image` and `strength`.
    """
    return await anyio.to_thread.run_sync(
        _plan_and_enqueue, req, fits, samples, connection, settings, caller, limiter=_enqueue_limiter()
    )


def _plan_and_enqueue(
    req: GenerateRequest,
    fits: FitRegistry,
    samples: SampleRegistry,
    connection: redis.Redis,
    settings: Settings,
    caller: KeyGrant,
) -> GenerateResponse:
    """Plan and enqueue in one thread hop (each hop costs about as much as a small request's work)."""
    job = plan_generation(req, fits, samples, settings, caller=caller)
    job_ids = enqueue_generation(job, connection, settings)
    return GenerateResponse(dataset=req.dataset, job_ids=job_ids, n_images=len(job.items))


@router.get(
    "/jobs/{job_id}",
    dependencies=[READ],
    response_model=JobState,
    responses=ERROR_RESPONSES,
    summary="State of one job",
)
async def get_job(job_id: str, connection: redis.Redis = Depends(get_redis_dep), caller: KeyGrant = READ):
    """Status, images done of total, the result (image paths) and the latest error text."""
    return await run_in_threadpool(rq_queue.job_status, job_id, connection, caller)


@router.get("/queue", dependencies=[READ], summary="Queue depth per registry and the live workers")
async def get_queue_stats(connection: redis.Redis = Depends(get_redis_dep), caller: KeyGrant = READ) -> dict:
    """Per queue: queued/started/finished/failed/deferred/scheduled counts; workers with their current job.

    Started jobs whose worker is provably gone are handed to RQ's cleanup first (retried or failed). A key below
    admin gets the counts only: ``workers`` and ``refused_jobs`` as numbers, no job ids, host names or PIDs.
    """
    stats = await run_in_threadpool(rq_queue.queue_stats, connection)
    return stats if caller.sees_all else rq_queue.queue_counts(stats)
