"""The gallery's HTML: the page of a ``GalleryPage``, its ID-percentile histogram, and the error page.

Server-rendered with Jinja2 (autoescaped), no external asset: the histogram is inline SVG, the only script submits
the filter form on change. Every link is built here and percent-encoded (a class named ``a#b`` or ``a?b`` must
give links that reach it), relative to the page so that the API and ``oodsynth gallery`` serve the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from ..store.results import ImageRecord, class_folder
from .gallery import PAGE_SIZES, VERIFIED_AT, VERIFIED_KEY, GalleryPage, is_verified

HIST_BINS = 20  # of 5 percentile points each
HIST_W, HIST_H = 240, 48
SORT_LABELS = {
    "class": "class",
    "id_percentile": "ID percentile (image)",
    "knn_distance": "k-NN distance",
    "margin": "margin",
    "vector_id_percentile": "ID percentile (vector)",
}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)


@lru_cache(maxsize=4)
def _template(name: str):
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    return env.get_template(name)


def query_link(params: dict[str, Any]) -> str:
    """``?a=1&class=a%23b``: a relative link to the same page with these parameters, every value encoded."""
    return "?" + urlencode(params, quote_via=quote)


def image_link(record: ImageRecord) -> str:
    """``images/<class folder>/<id>.png``, each segment percent-encoded: the record's place in the store (its
    ``path``; a row without one, where ``ResultStore.write_image`` would have put it)."""
    parts = record.path.split("/")
    folder, name = parts[1:] if len(parts) == 3 else (class_folder(record.class_name), f"{record.image_id}.png")
    return f"images/{quote(folder, safe='')}/{quote(name, safe='')}"


@dataclass
class Bar:
    x: float
    height: float
    count: int
    low: float
    high: float
    href: str


def histogram(page: GalleryPage) -> list[Bar]:
    """Bars of the image ID percentiles of every image the filters match (all pages); each links to its range."""
    counts = [0] * HIST_BINS
    width = 100 / HIST_BINS
    for value in page.id_percentiles:
        counts[min(HIST_BINS - 1, int(value // width))] += 1
    tallest = max(counts, default=0) or 1
    bars = []
    for i, count in enumerate(counts):
        low, high = i * width, (i + 1) * width
        href = query_link(page.query.params(id_min=low, id_max=high, page=None))
        bars.append(Bar(i * HIST_W / HIST_BINS, count / tallest * HIST_H, count, low, high, href))
    return bars


def _card(page: GalleryPage, r: ImageRecord) -> dict[str, Any]:
    diag = r.diagnostics
    target = diag.get("target_class")
    return {
        "src": image_link(r),
        "record": r,
        "verified": is_verified(r),
        "verified_pct": diag.get(VERIFIED_KEY),
        "fields": {k: v for k, v in r.model_dump().items() if k not in ("diagnostics", "decode")},
        "diagnostics": diag,
        "decode": r.decode,
        "pair": page.class_names.get(int(target), str(target)) if isinstance(target, (int, float)) else None,
    }


def render_gallery(page: GalleryPage) -> str:
    """The HTML page (images linked relative to it, as ``images/<class>/<id>.png``)."""
    q = page.query

    def link(**change: Any) -> str:
        return query_link(q.params(**change))

    return _template("gallery.html").render(
        page=page,
        q=q,
        cards=[_card(page, r) for r in page.records],
        verified_at=VERIFIED_AT,
        sort_labels=SORT_LABELS,
        page_sizes=sorted({*PAGE_SIZES, q.per_page}),
        bars=histogram(page),
        hist={"w": HIST_W, "h": HIST_H, "bar": HIST_W / HIST_BINS, "at": VERIFIED_AT / 100 * HIST_W},
        hidden={k: v for k, v in q.params(page=None).items()},
        first_link=link(page=None) if q.page > 1 else None,
        prev_link=link(page=q.page - 1 if q.page > 2 else None) if q.page > 1 else None,
        next_link=link(page=q.page + 1) if q.page < page.pages else None,
        last_link=link(page=page.pages) if q.page < page.pages else None,
    )


def render_error(status: int, errors: Iterable[tuple[str | None, str]], params: dict[str, str]) -> str:
    """A page for a browser that asked for a gallery page the filters cannot give: each field and why, and a link
    to the gallery without the offending parameters (and from page 1)."""
    named = [(field or "request", message) for field, message in errors]
    bad = {field for field, _ in named} | {"page"}
    kept = {k: v for k, v in params.items() if k not in bad}
    title = {404: "Not found", 422: "Bad query"}.get(status, "Error")
    return _template("gallery_error.html").render(
        status=status, title=title, errors=named, retry=query_link(kept) if kept else "?"
    )


__all__ = ["histogram", "image_link", "query_link", "render_error", "render_gallery"]
