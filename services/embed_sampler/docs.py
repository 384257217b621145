"""``/docs`` (Swagger UI) and ``/redoc`` served with their assets from a Python package, so both work offline.

FastAPI's default pages load Swagger UI and ReDoc from a CDN: a blank page on a machine without internet. This is
FastAPI's self-hosted docs pattern: the app is created with ``docs_url=None, redoc_url=None`` and these routes
serve the same pages with ``swagger_js_url``/``swagger_css_url``/``redoc_js_url`` pointing at ``/docs-assets``,
a static mount of the ``fastapi-offline`` package's copies of swagger-ui-dist and redoc (a dependency of the ``api``
extra, so no vendored minified file lives in this repository). No Google Fonts, Swagger UI's online validator
badge off, and ReDoc's one remote asset (the attribution logo, from its CDN) swapped for an empty inline image:
nothing the pages request leaves the server (tests/system/test_docs_offline.py watches every request).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
DOCS_URL, REDOC_URL, OAUTH2_REDIRECT_URL = "/docs", "/redoc", "/docs/oauth2-redirect"
REDOC_JS_URL = f"{ASSETS_URL}/redoc.offline.js"
REDOC_REMOTE_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
EMPTY_IMAGE = "data:image/svg+xml,%3Csvg xmlns=%22http://www.w3.org/2000/svg%22/%3E"


def assets_dir() -> Path:
    """The folder of ``swagger-ui-bundle.js``, ``swagger-ui.css``, ``redoc.standalone.js`` and ``favicon.png``."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


@lru_cache(maxsize=1)
def redoc_offline_js() -> bytes:
    """redoc.standalone.js with its remote logo replaced (read once: 1 MB)."""
    return (assets_dir() / "redoc.standalone.js").read_bytes().replace(REDOC_REMOTE_LOGO.encode(), EMPTY_IMAGE.encode())


def install_docs(app: FastAPI) -> None:
    """Mount the assets and add the two pages (and Swagger UI's OAuth2 redirect) to an app built without docs."""
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(REDOC_JS_URL, include_in_schema=False)  # before the mount, which would answer 404 for it
    def redoc_js() -> Response:
        return Response(redoc_offline_js(), media_type="text/javascript", headers={"Cache-Control": "max-age=3600"})

    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from the online validator
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=root + REDOC_JS_URL,
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
