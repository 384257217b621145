"""The gallery use case: a page of stored images with their manifest fields, filtered, sorted and paginated.

One query model and one selection for both surfaces: ``GET /datasets/{name}/gallery`` on the API and
``oodsynth gallery`` (a folder store, no API); ``gallery_html`` renders the page. The page links its images as
``images/<class>/<id>.png`` relative to itself, so both serve them at ``/datasets/{name}/images/...`` through
``gallery_image``. Torch-free, like the API.

A dataset's images belong to the tenants of the jobs that wrote them: each manifest row records its job's tenant
(none: default's, as every row written before tenants and every imported image). Admin sees every row; any other
caller sees only its tenant's rows, and a dataset with none of them does not exist for it (404). Rows, not
datasets, carry the owner, so two tenants that pick one dataset name never see each other's images.
"""

from __future__ import annotations

import math
import re
import threading
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..api_keys import LOCAL, KeyGrant
from ..errors import InputError, NotFound
from ..store.results import ImageRecord, ResultStore

# train-ood's default threshold (decoding.verification.DEFAULT_MAX_ID_PERCENTILE, a torch module the API does
# not import); tests/test_gallery.py checks that the two agree.
VERIFIED_AT = 10.0
VERIFIED_KEY = "verified_id_percentile"
MAX_PER_PAGE = 1000
_IMAGE_PATH = re.compile(r"(?P<folder>[^/\\\x00]+)/[A-Za-z0-9_.\-]+\.png")  # store.results' class folder / image id


SortKey = Literal["class", "id_percentile", "knn_distance", "margin", "vector_id_percentile"]
# The manifest diagnostic each sort key reads; "class" sorts by class, then image id.
SORT_FIELDS = {
    "id_percentile": VERIFIED_KEY,  # the decoded image's, re-encoded (what "verified" judges)
    "knn_distance": "knn_distance",
    "margin": "margin",
    "vector_id_percentile": "id_percentile",  # the sampled vector's, before decoding
}
PAGE_SIZES = (25, 50, 100, 200, 500, 1000)


class GalleryQuery(BaseModel):
    """The page's filters, order and page (query parameters); empty means any."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    class_name: str | None = Field(None, alias="class", description="Only this class (its name).")
    sampler: str | None = Field(None, description="Only images of this sampler.")
    verified: Literal["yes", "no"] | None = Field(
        None, description=f"yes: re-encoded at or below ID percentile {VERIFIED_AT:g}; no: above it or unverified."
    )
    sort: SortKey = Field(
        "class",
        description="Order: by class; by the image's re-encoded ID percentile; by the vector's k-NN distance, "
        "anchor margin or ID percentile. Images without the value come last.",
    )
    order: Literal["asc", "desc"] = Field("asc", description="Ascending or descending.")
    id_min: float | None = Field(None, ge=0, le=100, allow_inf_nan=False, description="Lowest image ID percentile.")
    id_max: float | None = Field(None, ge=0, le=100, allow_inf_nan=False, description="Highest image ID percentile.")
    knn_min: float | None = Field(None, ge=0, allow_inf_nan=False, description="Lowest k-NN distance.")
    knn_max: float | None = Field(None, ge=0, allow_inf_nan=False, description="Highest k-NN distance.")
    page: int = Field(1, ge=1)
    per_page: int = Field(100, ge=1, le=MAX_PER_PAGE)

    @field_validator("class_name", "sampler", "verified", "id_min", "id_max", "knn_min", "knn_max", mode="before")
    @classmethod
    def _any(cls, value: object) -> object:
        """The form sends "any" as an empty value."""
        return None if value == "" else value

    @field_validator("class_name")
    @classmethod
    def _nfc(cls, value: str | None) -> str | None:
        """Class names are stored in NFC: an NFD spelling of the same name must find its images."""
        return None if value is None else unicodedata.normalize("NFC", value)

    def params(self, **change: Any) -> dict[str, Any]:
        """The query string's parameters (defaults left out), with ``change`` applied: what links carry."""
        values = {**self.model_dump(by_alias=True, exclude_defaults=True), **change}
        return {k: v for k, v in values.items() if v is not None and v != ""}


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
    id_percentiles: list[float]  # the image ID percentile of every matching image that has one (the histogram's)

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.query.per_page))


def is_verified(record: ImageRecord) -> bool:
    value = record.diagnostics.get(VERIFIED_KEY)
    return value is not None and float(value) <= VERIFIED_AT


def _value(record: ImageRecord, key: str) -> float | None:
    """A numeric diagnostic, or None when absent or not a finite number."""
    value = record.diagnostics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _in_range(value: float | None, low: float | None, high: float | None) -> bool:
    if low is None and high is None:
        return True
    return value is not None and (low is None or value >= low) and (high is None or value <= high)


def _check(query: GalleryQuery, dataset: str, classes: list[str], samplers: list[str]) -> None:
    """Filter values that cannot match: an unknown class or sampler, an empty range; each names its field."""
    if query.class_name and query.class_name not in classes:
        raise InputError("class", f"no class {query.class_name!r} in {dataset} (classes: {classes[:20]})")
    if query.sampler and query.sampler not in samplers:
        raise InputError("sampler", f"no sampler {query.sampler!r} in {dataset} (samplers: {samplers})")
    for low, high in (("id_min", "id_max"), ("knn_min", "knn_max")):
        lo, hi = getattr(query, low), getattr(query, high)
        if lo is not None and hi is not None and lo > hi:
            raise InputError(high, f"{high}={hi:g} is below {low}={lo:g}")


@dataclass(frozen=True, slots=True)
class _Row:
    """A record with the values the page filters and sorts on, read once (not per request)."""

    record: ImageRecord
    values: dict[str, float | None]  # SORT_FIELDS' diagnostics
    pct: float | None  # the image's ID percentile (values[VERIFIED_KEY])

    def matches(self, query: GalleryQuery) -> bool:
        r, pct = self.record, self.pct
        return (
            (not query.class_name or r.class_name == query.class_name)
            and (not query.sampler or r.sampler == query.sampler)
            and (query.verified is None or (pct is not None and pct <= VERIFIED_AT) == (query.verified == "yes"))
            and _in_range(pct, query.id_min, query.id_max)
            and _in_range(self.values["knn_distance"], query.knn_min, query.knn_max)
        )


def _sort(rows: list[_Row], query: GalleryQuery) -> list[_Row]:
    """By the chosen key (missing values last, in either order), ties by class and image id (the rows' order)."""
    if query.sort == "class":
        return rows[::-1] if query.order == "desc" else rows
    key = SORT_FIELDS[query.sort]
    present = [row for row in rows if row.values[key] is not None]
    missing = [row for row in rows if row.values[key] is None]
    present.sort(key=lambda row: row.values[key] or 0.0, reverse=query.order == "desc")  # stable: ties keep order
    return present + missing


@dataclass(frozen=True)
class _Snapshot:
    versions: dict[str, str]  # the manifest objects' version tokens it was read at
    rows: list[_Row]  # by class, then image id
    classes: list[str]
    samplers: list[str]
    names: dict[int, str]
    owners: dict[str, str | None]  # image path -> the tenant its row records


def _summarised(versions: dict[str, str], rows: list[_Row]) -> _Snapshot:
    records = [row.record for row in rows]
    return _Snapshot(
        versions,
        rows,
        classes=sorted({r.class_name for r in records}),
        samplers=sorted({r.sampler for r in records}),
        names={r.class_index: r.class_name for r in records},
        owners={r.path: r.tenant for r in records},
    )


def _visible(snap: _Snapshot, caller: KeyGrant) -> _Snapshot:
    """The snapshot as the caller sees it: every row for admin, else only its tenant's rows."""
    return (
        snap if caller.sees_all else _summarised(snap.versions, [r for r in snap.rows if caller.sees(r.record.tenant)])
    )


_SNAPSHOTS: dict[tuple[str, str], _Snapshot] = {}  # (store url, dataset) -> its rows, per process, latest last
MAX_SNAPSHOTS = 4  # datasets kept at once (each holds its manifest's rows)
_SNAPSHOTS_LOCK = threading.Lock()


def _snapshot(store: ResultStore, dataset: str) -> _Snapshot:
    """The dataset's rows, validated and read once per manifest version: a page of a 10,000-image dataset then
    costs a listing of its shards and one pass over plain values (the first paint target is 1 s)."""
    versions = store._manifest_versions(dataset)  # one listing; the store re-reads only changed shards
    with _SNAPSHOTS_LOCK:
        cached = _SNAPSHOTS.pop((store.url, dataset), None)
        if cached is not None and cached.versions == versions:
            _SNAPSHOTS[(store.url, dataset)] = cached  # now the most recently read
            return cached
    records = sorted(store.records(dataset), key=lambda r: (r.class_index, r.image_id))
    values = [{key: _value(r, key) for key in SORT_FIELDS.values()} for r in records]
    snapshot = _summarised(versions, [_Row(r, v, v[VERIFIED_KEY]) for r, v in zip(records, values)])
    with _SNAPSHOTS_LOCK:
        _SNAPSHOTS[(store.url, dataset)] = snapshot
        while len(_SNAPSHOTS) > MAX_SNAPSHOTS:
            del _SNAPSHOTS[next(iter(_SNAPSHOTS))]  # the least recently read
    return snapshot


def gallery_page(store: ResultStore, dataset: str, query: GalleryQuery, caller: KeyGrant = LOCAL) -> GalleryPage:
    """The records of one page the caller sees; a filter value that matches nothing known names its field."""
    missing = NotFound("name", f"no dataset {dataset!r} in the store")
    if dataset not in store.datasets():
        raise missing
    snap = _visible(_snapshot(store, dataset), caller)
    if not snap.rows and not caller.sees_all:
        raise missing
    _check(query, dataset, snap.classes, snap.samplers)
    chosen = _sort([row for row in snap.rows if row.matches(query)], query)
    start = (query.page - 1) * query.per_page
    if chosen and start >= len(chosen):
        raise InputError("page", f"page {query.page} is past the last ({math.ceil(len(chosen) / query.per_page)})")
    percentiles = [pct for pct in (row.pct for row in chosen) if pct is not None]
    page = [row.record for row in chosen[start : start + query.per_page]]
    return GalleryPage(
        dataset, store.url, query, page, len(chosen), snap.classes, snap.samplers, snap.names, percentiles
    )


def gallery_image(store: ResultStore, dataset: str, path: str, caller: KeyGrant = LOCAL) -> bytes:
    """The PNG at ``<class>/<image_id>.png`` below ``dataset``; 404 for anything else.

    Checked by shape, not against the manifest (a set of every path per image request would cost O(images)):
    one class folder that is not hidden, one image id of the id alphabet, ``.png``; so only stored images
    are reachable, never a manifest shard, a temp file or anything outside the dataset. A caller below admin
    also needs the image's row to be its tenant's, looked up in the dataset's snapshot (read once per version).
    """
    missing = NotFound("path", f"no image {path!r} in dataset {dataset!r}")
    match = _IMAGE_PATH.fullmatch(path)
    if match is None or match["folder"].startswith(".") or dataset not in store.datasets():
        raise missing
    key = f"{dataset}/{path}"
    if not caller.sees_all:
        owners = _snapshot(store, dataset).owners
        if key not in owners or not caller.sees(owners[key]):
            raise missing
    try:
        return store.read_bytes(key)
    except FileNotFoundError:
        raise missing from None
