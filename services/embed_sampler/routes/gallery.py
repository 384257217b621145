"""The gallery: a server-rendered page of a stored dataset's images with their manifest fields, and the images.

The page and its filters come from ``oodsynth.service.gallery`` (also behind ``oodsynth gallery``); the images
are read from the result store. Read scope. Note that a browser sends no ``Authorization`` header for
``<img>``: with API keys configured, view the page through a proxy that adds it. A key below admin sees only its
tenant's images (``oodsynth.service.gallery``).
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse, Response

from oodsynth.api_keys import KeyGrant
from oodsynth.config import Settings
from oodsynth.names import normalize_name
from oodsynth.service.gallery import GalleryQuery, gallery_image, gallery_page
from oodsynth.service.gallery_html import render_gallery
from oodsynth.store.results import ResultStore

from ..auth import READ
from ..state import get_settings_dep

router = APIRouter(tags=["gallery"])

_stores: dict[str, ResultStore] = {}  # one per store URL: it keeps the parsed manifest shards between requests
_lock = threading.Lock()

_BOTH = {
    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}},
    "text/html": {"schema": {"type": "string"}},  # to a browser (Accept: text/html): the same errors as a page
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such dataset or image in the store."},
    422: {"description": "Bad filter or page; `detail[].loc` names the query parameter."},
}
PAGE_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such dataset in the store.", "content": _BOTH},
    422: {"description": "Bad filter, range or page; `detail[].loc` names the query parameter.", "content": _BOTH},
}


def _store(settings: Settings) -> ResultStore:
    key = str(settings.store)
    with _lock:
        if key not in _stores:
            _stores[key] = ResultStore(settings.store)
        return _stores[key]


@router.get(
    "/datasets/{name}/gallery",
    dependencies=[READ],
    response_class=HTMLResponse,
    responses=PAGE_ERRORS,
    summary="A page of the dataset's images with their manifest fields",
)
def gallery(
    name: str,
    query: Annotated[GalleryQuery, Query()],
    settings: Settings = Depends(get_settings_dep),
    caller: KeyGrant = READ,
) -> HTMLResponse:
    """HTML: images with sampler, verification and diagnostics; filter by class, sampler, verified, ID percentile
    and k-NN distance ranges; sort by ID percentile, k-NN distance or margin; a histogram of the ID percentiles."""
    return HTMLResponse(render_gallery(gallery_page(_store(settings), normalize_name(name), query, caller)))


@router.get(
    "/datasets/{name}/images/{path:path}",
    dependencies=[READ],
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "The stored PNG."}, **ERROR_RESPONSES},
    summary="One stored image of the dataset",
)
def image(name: str, path: str, settings: Settings = Depends(get_settings_dep), caller: KeyGrant = READ) -> Response:
    """The PNG at ``<class>/<image_id>.png`` of the dataset (only paths its manifest lists)."""
    data = gallery_image(_store(settings), normalize_name(name), normalize_name(path), caller)  # stored as NFC
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
