"""The embed_sampler HTTP API: fits, samples, generation jobs, features.

Thin by design: routes validate input, call ``oodsynth``, answer. All state
(fits, samples, the queue) lives in Redis, so several processes can serve the
same API. Run it with ``oodsynth serve`` or ``uvicorn services.embed_sampler.app:app``.
"""

from __future__ import annotations

from fastapi import FastAPI

from oodsynth.service import EmbedderCache
from oodsynth.state.fits import FitCache

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


def create_app() -> FastAPI:
    app = FastAPI(title="oodsynth embed_sampler", version="0.1.0", description=DESCRIPTION, openapi_tags=TAGS)
    app.state.fit_cache = FitCache()  # decoded fits, dropped when their stored version changes
    app.state.embedders = EmbedderCache()  # the encoder checkpoint, reloaded when the file changes
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware)  # inside the metrics: a 413 is counted too
    app.add_middleware(MetricsMiddleware)
    for module in (health, fits, sampling, generation, features, gallery):
        document_errors(module.router)  # 401/403/408/413/429/503 from what each route is built with
        app.include_router(module.router)
    install_openapi(app)
    return app


app = create_app()
