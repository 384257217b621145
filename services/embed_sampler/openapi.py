"""The OpenAPI document tells the truth: every error a route can answer, and the caps of this configuration.

Routes declare what is theirs (404, 409, 422, the npz answer); the answers that
come from shared machinery are added here from what each route is built with:
an API-key scope gives 401 and 403 (and the keyless local-only guard 403), a
request body 408 and 413, a slot of the bounded pool (``limits.HEAVY``) 429,
a stored sample read by id 410 (evicted for its tenant's budget), and Redis 503
everywhere. The schema's numeric maxima are the settings' caps the handlers
enforce (read when the document is first built), not the models' absolute bounds.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from oodsynth.config import get_settings
from oodsynth.queue.payloads import MAX_PIXELS_BOUND, pixel_side

from .auth import ADMIN, READ, WRITE
from .body import OffLoopBodyRoute
from .limits import HEAVY
from .schemas import ErrorBody


def _error(description: str) -> dict:
    return {"model": ErrorBody, "description": description}


def _json_errors(route: APIRoute, answer: dict) -> dict:
    """Errors are JSON whatever the route's own answers are (FastAPI files a ``model`` under the route's
    media type, e.g. text/html for a page), so a non-JSON route names the JSON content itself."""
    response_class = route.response_class
    response_class = getattr(response_class, "value", response_class)  # FastAPI's DefaultPlaceholder
    if getattr(response_class, "media_type", None) == "application/json" or "model" not in answer:
        return answer
    rest = {k: v for k, v in answer.items() if k != "model"}
    return {**rest, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}


SAMPLE_ID_ROUTES = ("/samples/{sample_id}", "/generate")  # they read a stored sample by id: 410 once it is evicted


def document_errors(router: APIRouter) -> None:
    """Add the shared error answers to each of the router's routes (a route's own description wins).

    Called on each router before the app includes it (an included router's routes are not the app's to edit).
    """
    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        extra: dict[int, dict] = {}
        if any(dep in (READ, WRITE, ADMIN) for dep in route.dependencies):
            extra[401] = _error("No API key, or an unknown one (keys configured); `WWW-Authenticate: Bearer`.")
            extra[403] = _error(
                "The key's scope does not cover the route; without keys: not this machine, or a cross-site request."
            )
        if route.body_field is not None:
            extra[408] = _error("The request body did not arrive within OODSYNTH_BODY_TIMEOUT_S.")
            bank = " or the bank's arrays would inflate past OODSYNTH_MAX_BANK_BYTES" if route.path == "/fits" else ""
            extra[413] = _error(
                f"The request body is over OODSYNTH_MAX_REQUEST_BYTES / OODSYNTH_MAX_UPLOAD_BYTES{bank}."
            )
        busy = []
        if HEAVY in route.dependencies:
            busy.append("every slot for fits, samples and features is busy")
        if isinstance(route, OffLoopBodyRoute) and route.body_field is not None:
            busy.append("a large body would take the memory budget past OODSYNTH_HEAVY_MEMORY_BUDGET_BYTES")
        if busy:
            extra[429] = {
                **_error(f"{'; or '.join(busy).capitalize()}: retry after `Retry-After` seconds."),
                "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}},
            }
        if route.path in SAMPLE_ID_ROUTES:
            extra[410] = _error(
                "The sample was evicted to keep its tenant within OODSYNTH_SAMPLE_BUDGET_BYTES: newer samples of the "
                "same tenant replaced it (another tenant's answers 404)."
            )
        if route.path != "/healthz":
            extra[503] = _error("Redis is unreachable or refuses writes (out of memory), or a service is missing.")
        for status, answer in extra.items():
            route.responses.setdefault(status, _json_errors(route, answer))


def _set(schema: dict, model: str, field: str, **constraints: Any) -> None:
    prop = schema.get("components", {}).get("schemas", {}).get(model, {}).get("properties", {}).get(field)
    if prop is not None:
        prop.update(constraints)


# OpenAPI links: how one answer feeds the next request (fit -> sample -> generate -> job, fit -> delete), for
# clients and for stateful testing (schemathesis follows them).
LINKS = {
    ("/fits", "post", "201"): {
        "GetFit": {"operationId": "get_fit_fits__name__get", "parameters": {"name": "$response.body#/name"}},
        "SampleFit": {"operationId": "sample_sample_post", "requestBody": {"fit": "$response.body#/name"}},
        "DeleteFit": {"operationId": "delete_fit_fits__name__delete", "parameters": {"name": "$response.body#/name"}},
    },
    ("/sample", "post", "200"): {
        "GetSample": {
            "operationId": "get_sample_samples__sample_id__get",
            "parameters": {"sample_id": "$response.body#/sample_id"},
        },
        "GenerateFromSample": {
            "operationId": "generate_generate_post",
            "requestBody": {"sample_id": "$response.body#/sample_id"},
        },
    },
    ("/generate", "post", "202"): {
        "GetJob": {"operationId": "get_job_jobs__job_id__get", "parameters": {"job_id": "$response.body#/job_ids/0"}}
    },
}


def add_links(schema: dict) -> None:
    for (path, method, status), links in LINKS.items():
        answer = schema.get("paths", {}).get(path, {}).get(method, {}).get("responses", {}).get(status)
        if answer is not None:
            answer["links"] = links


def install_openapi(app: FastAPI) -> None:
    """``app.openapi`` with the settings' caps as schema maxima, and the links between operations."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            settings = get_settings()
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            side = pixel_side(min(settings.max_decode_pixels, MAX_PIXELS_BOUND))  # check_decode_limits's cap
            _set(schema, "SampleRequest", "n_per_class", minimum=1, maximum=settings.max_n_per_class)
            _set(schema, "GenerateRequest", "steps", maximum=settings.max_decode_steps)
            _set(schema, "GenerateRequest", "images_per_vector", maximum=settings.max_images_per_request)
            for field in ("height", "width", "output_size"):
                _set(schema, "GenerateRequest", field, maximum=side)
            add_links(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema; it types openapi as a method
