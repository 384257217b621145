"""CLI command ``gallery``: the API's gallery page for a store, served on this machine without the API.

The same page (``oodsynth.service.gallery``) at the same paths, ``/datasets/<name>/gallery`` and its images, on
a small FastAPI app bound to 127.0.0.1; needs the ``api`` extra (FastAPI, uvicorn), no Redis.
"""

# No ``from __future__ import annotations``: FastAPI reads the route annotations of ``gallery_app``, whose
# names are imported inside it (the CLI does not import FastAPI until this command runs).
import typer

from ..errors import InputError
from .app import app


def gallery_app(store, dataset: str):
    """The FastAPI app of one store's gallery; ``/`` redirects to ``dataset``'s page."""
    from typing import Annotated

    from fastapi import FastAPI, Query
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, RedirectResponse, Response

    from ..errors import InputError, OodsynthError, join_loc, pydantic_message
    from ..service.gallery import GalleryQuery, gallery_image, gallery_page
    from ..service.gallery_html import render_error, render_gallery

    web = FastAPI(title=f"oodsynth gallery: {dataset}", docs_url=None, redoc_url=None)

    @web.exception_handler(OodsynthError)
    async def typed(request, exc: OodsynthError):  # a page for a browser, else the one line the CLI prints
        if "text/html" in request.headers.get("accept", ""):
            page = render_error(exc.status, exc.errors, dict(request.query_params))
            return HTMLResponse(page, status_code=exc.status)
        return Response(f"{exc.field}: {exc.message}", status_code=exc.status, media_type="text/plain")

    @web.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):  # a bad query parameter: 422 naming it, as above
        errors = [(join_loc(e["loc"]), pydantic_message(e)) for e in exc.errors()]
        return await typed(request, InputError(*errors[0], errors=errors))

    @web.get("/")
    def home():
        return RedirectResponse(f"/datasets/{dataset}/gallery")

    @web.get("/datasets/{name}/gallery", response_class=HTMLResponse)
    def page(name: str, query: Annotated[GalleryQuery, Query()]):
        return HTMLResponse(render_gallery(gallery_page(store, name, query)))

    @web.get("/datasets/{name}/images/{path:path}")
    def image(name: str, path: str):
        return Response(gallery_image(store, name, path), media_type="image/png")

    return web


@app.command("gallery")
def gallery_cmd(
    dataset: str = typer.Argument(..., help="Store dataset to show."),
    store: str | None = typer.Option(None, help="Result store folder (default: settings OODSYNTH_STORE)."),
    port: int = typer.Option(8011, min=1, max=65535, help="Port on 127.0.0.1."),
    open_browser: bool = typer.Option(False, "--open", help="Open the page in the default browser."),
) -> None:
    """Serve the gallery of a stored dataset (images per class, manifest fields, filters) on 127.0.0.1."""
    from ..config import get_settings, parse_store_setting
    from ..store.results import ResultStore

    try:
        import uvicorn
    except ImportError:
        raise InputError("gallery", "needs the api extra (pip install 'oodsynth[api]')") from None
    root = parse_store_setting(store) if store else get_settings().store
    source = ResultStore(root)
    if dataset not in source.datasets():
        raise InputError("dataset", f"{dataset!r} not found in {source.url} (available: {sorted(source.datasets())})")
    url = f"http://127.0.0.1:{port}/datasets/{dataset}/gallery"
    typer.echo(f"gallery: {url} (Ctrl-C stops)")
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    uvicorn.run(gallery_app(source, dataset), host="127.0.0.1", port=port, log_level="warning")
