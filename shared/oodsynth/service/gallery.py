"""The gallery use case: a page of stored images with their manifest fields, filtered and paginated, as HTML.

One renderer for both surfaces: ``GET /datasets/{name}/gallery`` on the API and ``oodsynth gallery`` (a folder
store, no API). The page links its images as ``images/<class>/<id>.png`` relative to itself, so both serve them
at ``/datasets/{name}/images/...`` through ``gallery_image``. Server-rendered with Jinja2 (autoescaped); the
only script is the filter form's submit on change. Torch-free, like the API.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import InputError, NotFound
from ..store.results import ImageRecord, ResultStore

# train-ood's default threshold (decoding.verification.DEFAULT_MAX_ID_PERCENTILE, a torch module the API does
# not import); tests/test_gallery.py checks that the two agree.
VERIFIED_AT = 10.0
VERIFIED_KEY = "verified_id_percentile"
MAX_PER_PAGE = 1000
_IMAGE_PATH = re.compile(r"(?P<folder>[^/\\\x00]+)/[A-Za-z0-9_.\-]+\.png")  # store.results' class folder / image id


class GalleryQuery(BaseModel):
    """The page's filters (query parameters); empty means any."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    class_name: str | None = Field(None, alias="class", description="Only this class (its name).")
    sampler: str | None = Field(None, description="Only images of this sampler.")
    verified: Literal["yes", "no"] | None = Field(
        None, description=f"yes: re-encoded at or below ID percentile {VERIFIED_AT:g}; no: above it or unverified."
    )
    page: int = Field(1, ge=1)
    per_page: int = Field(100, ge=1, le=MAX_PER_PAGE)

    @field_validator("class_name", "sampler", "verified", mode="before")
    @classmethod
    def _any(cls, value: object) -> object:
        """The form sends "any" as an empty value."""
        return None if value == "" else value


@dataclass
class GalleryPage:
    dataset: str
    store: str
    query: GalleryQuery
    records: list[ImageRecord]  # this page's
    total: int  # matching images over all pages
    classes: list[str]
    samplers: list[str]
    class_names: dict[int, str]  # class index -> name, for the class pair of boundary samplers (target_class)

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.query.per_page))


def is_verified(record: ImageRecord) -> bool:
    value = record.diagnostics.get(VERIFIED_KEY)
    return value is not None and float(value) <= VERIFIED_AT


def gallery_page(store: ResultStore, dataset: str, query: GalleryQuery) -> GalleryPage:
    """The records of one page; a filter value that matches nothing known names its field."""
    if dataset not in store.datasets():
        raise NotFound("name", f"no dataset {dataset!r} in the store")
    records = store.records(dataset)
    classes = sorted({r.class_name for r in records})
    samplers = sorted({r.sampler for r in records})
    if query.class_name and query.class_name not in classes:
        raise InputError("class", f"no class {query.class_name!r} in {dataset} (classes: {classes[:20]})")
    if query.sampler and query.sampler not in samplers:
        raise InputError("sampler", f"no sampler {query.sampler!r} in {dataset} (samplers: {samplers})")
    chosen = [
        r
        for r in records
        if (not query.class_name or r.class_name == query.class_name)
        and (not query.sampler or r.sampler == query.sampler)
        and (query.verified is None or is_verified(r) == (query.verified == "yes"))
    ]
    chosen.sort(key=lambda r: (r.class_index, r.image_id))
    start = (query.page - 1) * query.per_page
    if chosen and start >= len(chosen):
        raise InputError("page", f"page {query.page} is past the last ({math.ceil(len(chosen) / query.per_page)})")
    names = {r.class_index: r.class_name for r in records}
    return GalleryPage(
        dataset, store.url, query, chosen[start : start + query.per_page], len(chosen), classes, samplers, names
    )


def gallery_image(store: ResultStore, dataset: str, path: str) -> bytes:
    """The PNG at ``<class>/<image_id>.png`` below ``dataset``; 404 for anything else.

    Checked by shape, not against the manifest (a set of every path per image request would cost O(images)):
    one class folder that is not hidden, one image id of the id alphabet, ``.png``; so only stored images
    are reachable, never a manifest shard, a temp file or anything outside the dataset.
    """
    match = _IMAGE_PATH.fullmatch(path)
    if match is None or match["folder"].startswith(".") or dataset not in store.datasets():
        raise NotFound("path", f"no image {path!r} in dataset {dataset!r}")
    try:
        return store.read_bytes(f"{dataset}/{path}")
    except FileNotFoundError:
        raise NotFound("path", f"no image {path!r} in dataset {dataset!r}") from None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)


@lru_cache(maxsize=1)
def _template():
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    return env.get_template("gallery.html")


def render_gallery(page: GalleryPage) -> str:
    """The HTML page (images linked relative to it, as ``images/<class>/<id>.png``)."""
    q = page.query

    def link(**change) -> str:
        params = {"class": q.class_name, "sampler": q.sampler, "verified": q.verified, "per_page": q.per_page}
        params.update(change)
        return "?" + urlencode({k: v for k, v in params.items() if v not in (None, "")})

    cards = []
    for r in page.records:
        diag = r.diagnostics
        target = diag.get("target_class")
        cards.append(
            {
                "src": "images/" + r.path.split("/", 1)[1],
                "record": r,
                "verified": is_verified(r),
                "verified_pct": diag.get(VERIFIED_KEY),
                "fields": {k: v for k, v in r.model_dump().items() if k not in ("diagnostics", "decode")},
                "diagnostics": diag,
                "decode": r.decode,
                "pair": page.class_names.get(int(target), str(target)) if isinstance(target, (int, float)) else None,
            }
        )
    return _template().render(
        page=page,
        q=q,
        cards=cards,
        verified_at=VERIFIED_AT,
        prev_link=link(page=q.page - 1) if q.page > 1 else None,
        next_link=link(page=q.page + 1) if q.page < page.pages else None,
    )
