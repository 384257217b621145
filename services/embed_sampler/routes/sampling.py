"""Routes that draw outlier vectors from a stored fit and return stored samples.

Sampling and rendering run in the threadpool: a large request (100 classes x
10,000 vectors) takes seconds of numpy work that must not block the event loop.
Responses are rendered straight to JSON (no second pydantic pass over millions
of floats); non-finite numbers become ``null``.
"""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
import pydantic
from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from oodsynth.bank import BankError
from oodsynth.config import get_settings
from oodsynth.registry import FieldError, FitRegistry, SampleRegistry, StoredSample, resolve_classes, split_error
from oodsynth.samplers import UnknownSamplerError, get_sampler

from .. import observability as obs
from ..errors import field_error, from_field_error, from_pydantic, not_found, split_field
from ..schemas import SampleRequest, SampleResponse
from ..state import get_fits, get_samples

router = APIRouter(tags=["sampling"])
REQUEST_FIELDS = frozenset(SampleRequest.model_fields)

ERROR_RESPONSES = {
    404: {"description": "Unknown fit or sample id."},
    422: {"description": "Bad input; `detail[].loc` names the field (e.g. `body.params.sigma`)."},
}


def finite_list(values: np.ndarray) -> list:
    """``values.tolist()`` with NaN/inf replaced by ``None`` (JSON has no NaN)."""
    arr = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(arr)
    if finite.all():
        return arr.tolist()
    obj = arr.astype(object)
    obj[~finite] = None
    return obj.tolist()


def _stats(values: np.ndarray) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"mean": None, "min": None, "max": None}
    return {"mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max())}


def render_sample(sample: StoredSample, include_vectors: bool) -> JSONResponse:
    """The ``SampleResponse`` JSON of a stored sample."""
    order = list(dict.fromkeys(sample.class_index.tolist()))  # classes in the order drawn
    counts = np.bincount(sample.class_index, minlength=len(sample.class_names)) if sample.class_index.size else []
    body = {
        "sample_id": sample.sample_id,
        "fit": sample.fit_name,
        "method": sample.method,
        "params": sample.params,
        "seed": int(sample.seed),
        "dim": sample.dim,
        "n": int(sample.vectors.shape[0]),
        "classes": [{"index": c, "name": sample.class_names[c], "n": int(counts[c])} for c in order],
        "class_index": sample.class_index.tolist() if include_vectors else None,
        "vectors": finite_list(sample.vectors) if include_vectors else None,
        "diagnostics": {k: finite_list(v) for k, v in sample.diagnostics.items()} if include_vectors else None,
        "diagnostics_summary": {k: _stats(v) for k, v in sample.diagnostics.items()},
    }
    return JSONResponse(body)


@router.post(
    "/sample",
    response_model=SampleResponse,
    responses=ERROR_RESPONSES,
    summary="Draw outlier vectors from a fit",
)
async def sample(
    req: SampleRequest,
    fits: FitRegistry = Depends(get_fits),
    samples: SampleRegistry = Depends(get_samples),
):
    """Run a sampler on the fit's classes; the sample is kept under `sample_id` for `/generate`.

    Each vector comes with its log-density, ID percentile, k-NN distance to
    the ID bank (null unless the method uses the bank or `knn_diagnostics`)
    and cosine to its class mean.
    """
    try:
        fit, bank = await run_in_threadpool(fits.get, req.fit)
    except KeyError:
        raise not_found(["body", "fit"], f"no fit named {req.fit!r}") from None
    try:
        classes = resolve_classes(fit.class_names_, req.classes)
    except FieldError as exc:
        raise from_field_error(exc, ["body"]) from exc
    total = req.n_per_class * (len(classes) if classes is not None else fit.n_classes)
    cap = get_settings().max_vectors_per_sample
    if total > cap:  # 100 classes x 10,000 x 768-d would be 3 GB in Redis and in the answer
        raise field_error(
            ["body", "n_per_class"],
            f"{total} vectors requested ({req.n_per_class} per class), above the cap of {cap} "
            "(settings OODSYNTH_MAX_VECTORS_PER_SAMPLE); ask for fewer classes per request",
        )
    try:
        sampler = get_sampler(req.method, req.params)
    except UnknownSamplerError as exc:
        raise field_error(["body", "method"], split_error(exc, "method")[1]) from exc
    except pydantic.ValidationError as exc:
        raise from_pydantic(exc, ["body", "params"]) from exc
    use_bank = bool(sampler.needs_bank or req.knn_diagnostics)

    start = time.perf_counter()
    try:
        result = await run_in_threadpool(
            sampler.sample,
            fit,
            req.n_per_class,
            classes=classes,
            seed=req.seed,
            bank=bank if use_bank else None,
            scale_to_anchor=req.scale_to_anchor,
        )
    except (FieldError, BankError) as exc:
        raise from_field_error(exc, ["body", "params"]) from exc
    except ValueError as exc:  # a parameter combination the sampler cannot run with
        field, message = split_error(exc, "params")
        loc = split_field(field)
        if loc[0] == "bank":
            loc = ["fit"]
        elif loc[0] not in REQUEST_FIELDS:
            loc = ["params", *loc]
        raise field_error(["body", *loc], f"{req.method} cannot run with these inputs: {message}") from exc
    obs.SAMPLE_SECONDS.labels(req.method).observe(time.perf_counter() - start)
    obs.SAMPLES_DRAWN.labels(req.method).inc(len(result.vectors))

    stored = StoredSample.from_result(result, req.fit, fit.class_names_)
    await run_in_threadpool(samples.put_stored, stored)
    return await run_in_threadpool(render_sample, stored, req.include_vectors)


@router.get(
    "/samples/{sample_id}",
    response_model=SampleResponse,
    responses=ERROR_RESPONSES,
    summary="A stored sample",
)
async def get_sample(
    sample_id: str,
    include_vectors: Annotated[bool, Query(description="Return vectors and per-vector diagnostics.")] = True,
    samples: SampleRegistry = Depends(get_samples),
):
    """The sample as `POST /sample` returned it (until it expires after `result_ttl_s`)."""
    try:
        stored = await run_in_threadpool(samples.get, sample_id)
    except KeyError:
        raise not_found(["path", "sample_id"], f"no sample {sample_id!r} (unknown or expired)") from None
    return await run_in_threadpool(render_sample, stored, include_vectors)
