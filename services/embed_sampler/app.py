"""The embed_sampler HTTP API: fits, samples, generation jobs, features.

Thin by design: routes validate input, call ``oodsynth``, answer. All state
(fits, samples, the queue) lives in Redis, so several processes can serve the
same API. Run it with ``oodsynth serve`` or ``uvicorn services.embed_sampler.app:app``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from oodsynth.config import get_settings
from oodsynth.errors import OodsynthError
from oodsynth.service import EmbedderCache
from oodsynth.state.fits import FitCache

from .docs import install_docs
from .errors import install_error_handlers
from .limits import BodyLimitMiddleware
from .observability import MetricsMiddleware
from .openapi import document_errors, install_openapi
from .routes import features, fits, gallery, generation, health, sampling

DESCRIPTION = """
Imagine outliers for OOD detection.

1. `POST /fits` a feature bank (`.npz` with features, labels, anchors, class_names):
   one density per class on the unit sphere is fitted and stored.
2. `POST /sample` draws low-density vectors per class with a sampler, with
   per-vector diagnostics; the sample is kept under its `sample_id`.
3. `POST /generate` queues decoding of a sample into images by Stable Diffusion
   workers; follow with `GET /jobs/{id}` and `GET /queue`.

Every error answers `{"detail": [{"loc": [...], "msg": ..., "type": ...}]}`
where `loc` names the offending field.
"""

TAGS = [
    {"name": "fits", "description": "Class-density fits of feature banks."},
    {"name": "sampling", "description": "Outlier vectors drawn from fits."},
    {"name": "operations", "description": "Health and metrics."},
]


log = logging.getLogger("oodsynth.api")


@asynccontextmanager
async def check_settings_at_start(app: FastAPI) -> AsyncIterator[None]:
    """Read the settings before the first request, as ``oodsynth serve`` does: under plain uvicorn a bad
    setting (a store URL, a bucket name) stops the start with one line naming its variable, instead of
    every route, ``/healthz`` included, answering 500."""
    try:
        get_settings()
    except OodsynthError as exc:
        for field, message in exc.errors:
            log.error("bad setting %s: %s", field, message)
        raise SystemExit(f"error: {exc}") from None
    yield


def create_app() -> FastAPI:
    app = FastAPI(
        title="oodsynth embed_sampler",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=check_settings_at_start,
        docs_url=None,  # install_docs serves /docs and /redoc with their assets from a package (offline)
        redoc_url=None,
    )
    app.state.fit_cache = FitCache()  # decoded fits, dropped when their stored version changes
    app.state.embedders = EmbedderCache()  # the encoder checkpoint, reloaded when the file changes
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware)  # inside the metrics: a 413 is counted too
    app.add_middleware(MetricsMiddleware)
    for module in (health, fits, sampling, generation, features, gallery):
        document_errors(module.router)  # 401/403/408/413/429/503 from what each route is built with
        app.include_router(module.router)
    install_openapi(app)
    install_docs(app)
    return app


app = create_app()
