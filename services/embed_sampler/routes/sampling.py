"""Routes that draw outlier vectors from a stored fit and return stored samples.

Sampling and rendering run in the threadpool: a large request (100 classes x
10,000 vectors) takes seconds of numpy work that must not block the event loop.
Responses are rendered straight to JSON by orjson from the numpy arrays (no
second pydantic pass, no Python float per number); non-finite numbers become ``null``. A sample belongs to the
tenant of the key that drew it; another tenant's fit or sample answers 404 as a missing one, and a sample evicted to
keep its tenant within OODSYNTH_SAMPLE_BUDGET_BYTES answers its tenant 410. ``Accept: application/x-npz`` (or
``?format=npz``) answers with the sample's ``.npz`` instead: 3 MB for 1,000
768-d vectors, against about 15 MB of JSON, and no float formatting.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from oodsynth.api_keys import KeyGrant
from oodsynth.config import Settings
from oodsynth.service import draw_sample
from oodsynth.service.sampling import check_json_answer
from oodsynth.state.fits import FitRegistry
from oodsynth.state.samples import SampleRegistry, StoredSample

from .. import observability as obs
from ..auth import READ, WRITE
from ..body import OffLoopBodyRoute
from ..limits import HEAVY, MEMORY, run_until_disconnect
from ..schemas import SampleRequest, SampleResponse
from ..state import get_fits, get_samples, get_settings_dep

router = APIRouter(tags=["sampling"], route_class=OffLoopBodyRoute)  # large JSON bodies parsed off the loop

NPZ = "application/x-npz"
NPZ_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {NPZ: {"schema": {"type": "string", "format": "binary"}}},
        "description": "JSON, or with `Accept: application/x-npz` (or `format=npz`) the sample as an "
        ".npz: vectors, class_index, class_names, meta (JSON) and diagnostics.<name>.",
    }
}
Format = Annotated[
    Literal["json", "npz"] | None, Query(description="npz: answer with the .npz (as Accept: application/x-npz).")
]


def wants_npz(request: Request, format: str | None) -> bool:
    return format == "npz" if format else NPZ in request.headers.get("accept", "")


def npz_response(sample: StoredSample) -> Response:
    """The sample as ``StoredSample.to_bytes`` writes it (the format Redis keeps and ``oodsynth sample --out`` saves)."""
    return Response(
        sample.to_bytes(),
        media_type=NPZ,
        headers={"Content-Disposition": f'attachment; filename="{sample.sample_id}.npz"'},
    )


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown fit or sample id."},
    422: {"description": "Bad input; `detail[].loc` names the field (e.g. `body.params.sigma`)."},
}


def render_json(body: dict) -> Response:
    """JSON by orjson straight from numpy arrays: 20x faster than lists of Python floats and half the text
    (float32 vectors print as float32), and NaN/inf become ``null`` as JSON needs."""
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def _stats(values: np.ndarray) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"mean": None, "min": None, "max": None}
    return {"mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max())}


def render_sample(
    sample: StoredSample, include_vectors: bool, settings: Settings, evicted: list[str] | None = None
) -> Response:
    """The ``SampleResponse`` JSON of a stored sample (``InputError`` when it is too large for JSON); ``evicted``:
    the ids the put evicted (``POST /sample`` only)."""
    if include_vectors:
        check_json_answer(sample, settings)
    order = list(dict.fromkeys(sample.class_index.tolist()))  # classes in the order drawn
    counts: np.ndarray | list[int] = (
        np.bincount(sample.class_index, minlength=len(sample.class_names)) if sample.class_index.size else []
    )
    body = {
        "sample_id": sample.sample_id,
        "fit": sample.fit_name,
        "method": sample.method,
        "params": sample.params,
        "seed": int(sample.seed),
        "dim": sample.dim,
        "n": int(sample.vectors.shape[0]),
        "classes": [{"index": c, "name": sample.class_names[c], "n": int(counts[c])} for c in order],
        "class_index": np.ascontiguousarray(sample.class_index) if include_vectors else None,
        "vectors": np.ascontiguousarray(sample.vectors) if include_vectors else None,
        "diagnostics": {k: np.ascontiguousarray(v) for k, v in sample.diagnostics.items()} if include_vectors else None,
        "diagnostics_summary": {k: _stats(v) for k, v in sample.diagnostics.items()},
    }
    if evicted:  # absent when none: GET /samples/{id} then answers exactly what POST /sample did
        body["evicted"] = evicted
    return render_json(body)


@router.post(
    "/sample",
    dependencies=[WRITE, HEAVY],
    response_model=SampleResponse,
    responses={**ERROR_RESPONSES, **NPZ_RESPONSE},
    summary="Draw outlier vectors from a fit",
)
async def sample(
    req: SampleRequest,
    request: Request,
    format: Format = None,
    fits: FitRegistry = Depends(get_fits),
    samples: SampleRegistry = Depends(get_samples),
    settings: Settings = Depends(get_settings_dep),
    caller: KeyGrant = WRITE,
):
    """Run a sampler on the fit's classes; the sample is kept under `sample_id` for `/generate`.

    Each vector comes with its log-density, ID percentile, k-NN distance to
    the ID bank (null unless the method uses the bank or `knn_diagnostics`)
    and cosine to its class mean. `evicted` (absent when none) lists the caller's tenant's samples dropped to keep it
    within OODSYNTH_SAMPLE_BUDGET_BYTES (they answer 410 from now on).
    """
    start = time.perf_counter()
    as_npz = wants_npz(request, format)
    evicted: list[str] = []
    ticket = MEMORY.ticket()  # the request's share of the memory budget, taken once its size is known
    try:
        stored = await run_until_disconnect(
            request,
            draw_sample,
            fits,
            samples,
            settings,
            json_answer=req.include_vectors and not as_npz,  # an over-size JSON answer is refused before sampling
            admit=ticket.admit,
            caller=caller,
            on_evicted=evicted.extend,
            **req.model_dump(exclude={"include_vectors"}),
        )
        obs.SAMPLE_SECONDS.labels(req.method).observe(time.perf_counter() - start)
        obs.SAMPLES_DRAWN.labels(req.method).inc(len(stored.vectors))
        if as_npz:
            return await run_in_threadpool(npz_response, stored)
        return await run_in_threadpool(render_sample, stored, req.include_vectors, settings, evicted)
    finally:
        ticket.release()


@router.get(
    "/samples/{sample_id}",
    dependencies=[READ],
    response_model=SampleResponse,
    responses={**ERROR_RESPONSES, **NPZ_RESPONSE},
    summary="A stored sample",
)
async def get_sample(
    sample_id: str,
    request: Request,
    include_vectors: Annotated[bool, Query(description="Return vectors and per-vector diagnostics.")] = True,
    format: Format = None,
    samples: SampleRegistry = Depends(get_samples),
    settings: Settings = Depends(get_settings_dep),
    caller: KeyGrant = READ,
):
    """The sample as `POST /sample` returned it (until it expires after `result_ttl_s`)."""
    stored = await run_in_threadpool(samples.get, sample_id, caller=caller)
    if wants_npz(request, format):
        return await run_in_threadpool(npz_response, stored)
    return await run_in_threadpool(render_sample, stored, include_vectors, settings)


@router.delete(
    "/samples/{sample_id}",
    status_code=204,
    responses={404: ERROR_RESPONSES[404]},
    summary="Delete a stored sample",
)
def delete_sample(sample_id: str, samples: SampleRegistry = Depends(get_samples), caller: KeyGrant = WRITE) -> Response:
    """Free a sample before it expires (it works when Redis is full); another tenant's answers 404 as a missing one,
    and one evicted for its tenant's budget 410."""
    if not samples.delete(sample_id, caller=caller):
        raise samples.absent(sample_id, caller=caller)
    return Response(status_code=204)
