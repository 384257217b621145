"""Routes for class-density fits: upload a bank and fit it, list, inspect, delete.

``POST /fits`` refuses to overwrite an existing name with 409 unless the
request says ``?replace=true``: silently replacing a fit would change what
later ``/sample`` calls (and the samples other clients refer to) mean. Fits belong to the creating key's
tenant; a key below admin lists and reads only its tenant's, and another tenant's answers 404 as a missing one.
Names are one namespace for every tenant (``oodsynth.state.fits``): a name another tenant holds is a 409.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, File, Form, Header, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from oodsynth.api_keys import KeyGrant
from oodsynth.densities import DENSITY_KINDS
from oodsynth.errors import NotFound
from oodsynth.names import MAX_NAME_LENGTH
from oodsynth.service import create_fit as create_fit_use_case
from oodsynth.state.fits import FitRegistry

from .. import observability as obs
from ..auth import ADMIN, READ, WRITE
from ..limits import HEAVY
from ..schemas import FitList, FitSummary
from ..state import get_fits

router = APIRouter(tags=["fits"])

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "No fit with that name."},
    409: {"description": "A fit with that name exists and replace was not requested."},
    422: {"description": "Bad input; `detail[].loc` names the field (e.g. `body.file.features`)."},
}


@router.post(
    "/fits",
    status_code=201,
    dependencies=[WRITE, HEAVY],
    response_model=FitSummary,
    responses=ERROR_RESPONSES,
    summary="Fit class densities to a feature bank",
)
async def create_fit(
    response: Response,
    name: Annotated[
        str,
        Form(
            max_length=MAX_NAME_LENGTH,
            description="Fit name: printable, at most 128 characters, not starting with '.', no '/' or '\\'.",
        ),
    ],
    file: Annotated[
        UploadFile,
        File(
            description="Feature bank `.npz`: features (N,D) float32, labels (N,) int, anchors (C,D), class_names (C,)."
        ),
    ],
    density: Annotated[Literal[DENSITY_KINDS], Form(description="Density family per class.")] = "vmf",  # type: ignore[valid-type]  # a Literal of a registry's keys, made at import; FastAPI checks the values
    replace: Annotated[bool, Query(description="Overwrite an existing fit of this name.")] = False,
    fits: FitRegistry = Depends(get_fits),
    caller: KeyGrant = WRITE,
):
    """Validate the bank, fit one density per class on the unit sphere, store both in Redis.

    Answers 201 with the fit's summary (per-class κ or variance and the
    quantiles of the ID log-densities).
    """
    data = await file.read()
    start = time.perf_counter()
    summary = await run_in_threadpool(
        create_fit_use_case, fits, name, data, density, replace=replace, bank_field="file", caller=caller
    )
    obs.FIT_SECONDS.labels(density).observe(time.perf_counter() - start)
    obs.FITS.labels(density).inc()
    response.headers["ETag"] = f'"{summary["version"]}"'
    response.headers["Location"] = f"/fits/{quote(name, safe='')}"
    return summary


@router.get("/fits", dependencies=[READ], response_model=FitList, summary="List stored fits")
def list_fits(fits: FitRegistry = Depends(get_fits), caller: KeyGrant = READ) -> FitList:
    return FitList(fits=fits.list(caller))


@router.get(
    "/fits/{name}",
    dependencies=[READ],
    response_model=FitSummary,
    responses={**ERROR_RESPONSES, 304: {"description": "Unchanged since the ETag given in If-None-Match."}},
    summary="A fit's summary",
)
def get_fit(
    name: str,
    response: Response,
    if_none_match: Annotated[str | None, Header()] = None,
    fits: FitRegistry = Depends(get_fits),
    caller: KeyGrant = READ,
):
    """Per-class κ (vMF) or mean variance (Gaussian) and ID log-density quantiles."""
    summary = fits.summary(name, field="name", caller=caller)
    etag = f'"{summary["version"]}"'
    if if_none_match == etag:
        return Response(status_code=304, headers={"ETag": etag})
    response.headers["ETag"] = etag
    return summary


@router.delete(
    "/fits/{name}", status_code=204, dependencies=[ADMIN], responses={404: ERROR_RESPONSES[404]}, summary="Delete a fit"
)
def delete_fit(name: str, fits: FitRegistry = Depends(get_fits)) -> Response:
    if not fits.delete(name):
        raise NotFound("name", f"no fit named {name!r}")
    return Response(status_code=204)
