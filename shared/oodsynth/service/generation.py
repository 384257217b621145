"""Use case: turn a generation request into one checked ``DecodeJob`` and queue it.

Everything is checked before anything is enqueued: a request that fails any
check leaves the queue untouched. The job is split into RQ jobs of
``images_per_job`` images by ``oodsynth.queue.enqueue.enqueue_decode``.
An img2img request (``init_images``) starts from real images stored as a dataset
(``import_image_folder``); each item gets its init image here, before it is queued.
The caller's tenant must see the fit, the sample and the init images it names, and owns the
jobs and the images they write (``DecodeJob.tenant``, recorded in every manifest row).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Annotated

import numpy as np
import pydantic
import redis
from PIL import Image as PILImage
from pydantic import ConfigDict, Field, field_validator

from ..api_keys import DEFAULT_TENANT, LOCAL, KeyGrant
from ..batching import batches
from ..config import Settings
from ..errors import InputError
from ..names import validate_name
from ..queue.enqueue import enqueue_decode
from ..queue.payloads import (
    DecodeJob,
    DecodeSettings,
    build_items,
    check_decode_limits,
    dataset_name_field,
    job_from_sample,
)
from ..state.fits import FitRegistry
from ..state.samples import SampleRegistry, StoredSample
from ..store.results import ImageRecord, ResultStore, validate_dataset_name

MAX_CLASS_INDEX = 2**31
# Inline vectors are rescaled to their anchor's norm, so only their direction matters; a norm
# outside this range is a unit or serialisation mistake, not a direction worth decoding.
MIN_INLINE_NORM, MAX_INLINE_NORM = 1e-6, 1e6


def _one_source(schema: dict) -> None:
    """The schema states what ``plan_generation`` checks: a ``sample_id``, or inline ``vectors`` with their
    ``classes`` and ``fit`` (non-empty), never both."""
    schema["examples"] = [{"sample_id": "3f2a...", "dataset": "cifar100-outliers", "images_per_vector": 1}]
    props = schema.get("properties", {})
    for name in ("vectors", "classes"):
        for option in props.get(name, {}).get("anyOf", []):
            if option.get("type") == "array":
                option["minItems"] = 1
    for option in props.get("vectors", {}).get("anyOf", []):
        if option.get("type") == "array":
            option.get("items", {})["minItems"] = 1
    null = {"type": "null"}
    schema["oneOf"] = [
        {
            "required": ["sample_id"],
            "properties": {"sample_id": {"type": "string"}, "vectors": null, "classes": null, "fit": null},
        },
        {
            "required": ["vectors", "classes", "fit"],
            "properties": {
                "sample_id": null,
                "vectors": {"type": "array"},
                "classes": {"type": "array"},
                "fit": {"type": "string"},
            },
        },
    ]


class GenerateRequest(DecodeSettings):
    """Decode a stored sample (``sample_id``) or inline ``vectors`` + ``classes`` into images."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # `seed: false` or `steps: "50"` are mistakes, not numbers
        json_schema_extra=lambda schema: _one_source(schema),
    )

    dataset: str = Field(description="Result-store dataset (one folder name) the images go into.")
    sample_id: str | None = Field(None, description="A sample returned by POST /sample.")
    vectors: list[list[float]] | None = Field(
        None, description="Inline vectors (M, D), instead of sample_id; need `fit`, and are rescaled to ||T(y)||."
    )
    classes: list[Annotated[int, Field(ge=0, lt=MAX_CLASS_INDEX)]] | None = Field(
        None, description="Class index of each inline vector (a class of `fit`)."
    )
    fit: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Fit of the inline vectors (required with them): class names, dimension, anchor norms.",
    )
    images_per_vector: int = Field(1, ge=1, description="Images decoded from each vector, each with its own seed.")
    seed: int | None = Field(None, ge=0, description="Base seed; each image's seed derives from it and its id.")

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return dataset_name_field(v)


def _check_inline_rows(req: GenerateRequest) -> np.ndarray:
    """The inline vectors as an array: one class each, one dimension, finite, with a sane norm."""
    if req.classes is None:
        raise InputError("classes", "give one class index per vector")
    rows = req.vectors
    if rows is None or len(rows) == 0:
        raise InputError("vectors", "give at least one vector")
    if len(req.classes) != len(rows):
        raise InputError("classes", f"expected {len(rows)} class indices (one per vector), got {len(req.classes)}")
    dims = {len(v) for v in rows}
    if len(dims) != 1 or 0 in dims:
        raise InputError("vectors", f"rows must be non-empty and of one dimension, got dimensions {sorted(dims)}")
    vectors = np.asarray(rows, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if bad.size:
        raise InputError(f"vectors[{int(bad[0])}]", f"{bad.size} vectors contain NaN or inf (first: row {int(bad[0])})")
    with np.errstate(over="ignore"):
        norms = np.linalg.norm(vectors, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms < MIN_INLINE_NORM) | (norms > MAX_INLINE_NORM))
    if bad.size:
        raise InputError(
            f"vectors[{int(bad[0])}]",
            f"{bad.size} vectors have a norm outside [{MIN_INLINE_NORM:g}, {MAX_INLINE_NORM:g}] "
            f"(first: row {int(bad[0])}, norm {float(norms[bad[0]]):.3g})",
        )
    return vectors


def inline_vector_ids(vectors: np.ndarray, class_index: np.ndarray) -> list[str]:
    """Ids for vectors sent inline: a digest of the whole request's vectors and classes plus the row.

    The same request sent twice gets the same ids (so the same image ids and
    files); two equal rows of one request still get distinct ids.
    """
    h = hashlib.sha256(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(class_index, dtype=np.int64).tobytes())
    digest = h.hexdigest()[:16]
    return [f"inline-{digest}:{i}" for i in range(len(vectors))]


def rescale_to_anchors(vectors: np.ndarray, class_index: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Give each vector the norm of its class anchor ||T(y)||, the scale the text encoder expects."""
    vectors = np.asarray(vectors, dtype=np.float64)  # float64: a huge row must not overflow to inf
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    bad = np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0))
    if bad.size:
        raise InputError("vectors", f"row {int(bad[0])} has zero or non-finite norm")
    target = np.linalg.norm(np.asarray(anchors, dtype=np.float64)[np.asarray(class_index)], axis=1, keepdims=True)
    return (vectors / norms * target).astype(np.float32)


def _inline_job(req: GenerateRequest, fits: FitRegistry, model: str, caller: KeyGrant) -> DecodeJob:
    """Inline vectors need a ``fit``: it names the classes, fixes the dimension and gives the anchor norms."""
    if req.fit is None:
        _check_inline_rows(req)  # a bad row is named first; then the missing fit
        raise InputError(
            "fit",
            "inline vectors need a fit: it names the classes, fixes the dimension "
            "and gives the anchor norms the vectors are rescaled to",
        )
    fit, _bank = fits.get(req.fit, caller=caller)  # first: an unknown fit is a 404, whatever the vectors
    vectors = _check_inline_rows(req)
    if vectors.shape[1] != fit.dim:
        raise InputError("vectors", f"dimension {vectors.shape[1]} does not match fit {req.fit!r} ({fit.dim})")
    names = list(fit.class_names_)
    classes = np.asarray(req.classes, dtype=np.int64)  # each in [0, 2**31) by the schema
    out = np.flatnonzero(classes >= len(names))
    if out.size:
        raise InputError(
            f"classes[{int(out[0])}]",
            f"class index {int(classes[out[0]])} is out of range [0, {len(names)}) of fit {req.fit!r}",
        )
    vectors = rescale_to_anchors(vectors, classes, fit.anchors_)
    if not np.isfinite(vectors).all():
        raise InputError("vectors", "rescaling to the anchor norms gave non-finite values")
    decode = req.request_settings()
    items = build_items(
        dataset=req.dataset,
        vectors=vectors,
        class_index=classes,
        class_names=names,
        vector_ids=inline_vector_ids(vectors, classes),
        sampler="inline",
        images_per_vector=req.images_per_vector,
        seed=req.seed,
        decode=decode,
        model=model,
    )
    return DecodeJob(dataset=req.dataset, model=model, items=items, verify_fit=req.fit, **decode)


def check_image_count(n_vectors: int, images_per_vector: int, settings: Settings) -> None:
    n_images = n_vectors * images_per_vector
    if n_images > settings.max_images_per_request:
        raise InputError(
            "images_per_vector",
            f"{n_vectors} vectors x {images_per_vector} images = {n_images} images, over the limit of "
            f"{settings.max_images_per_request} per request (settings OODSYNTH_MAX_IMAGES_PER_REQUEST)",
        )


def plan_generation(
    req: GenerateRequest,
    fits: FitRegistry,
    samples: SampleRegistry,
    settings: Settings,
    *,
    sample: StoredSample | None = None,
    caller: KeyGrant = LOCAL,
) -> DecodeJob:
    """The whole request as one validated ``DecodeJob`` for ``settings.model``, owned by the caller's tenant.

    ``sample`` is a sample already in hand (a local ``.npz``); otherwise
    ``req.sample_id`` is looked up in ``samples``.
    """
    check_decode_limits(req, settings)
    if sample is None and (req.sample_id is None) == (req.vectors is None):
        raise InputError("sample_id", "give either sample_id or vectors (+ classes), not both or neither")
    if sample is None and req.vectors is not None:  # inline vectors (the check above: then no sample_id)
        check_image_count(len(req.vectors), req.images_per_vector, settings)
        return _with_init_images(_owned(_inline_job(req, fits, settings.model, caller), caller), settings, caller)
    for name in ("classes", "fit"):
        if getattr(req, name) is not None:
            raise InputError(name, "only used with inline vectors; a stored sample carries its own")
    if sample is None:
        assert req.sample_id is not None  # the check above: neither a sample in hand nor vectors means a sample_id
        sample = samples.get(req.sample_id, caller=caller)
    if len(sample.vectors) == 0:
        raise InputError("sample_id", "the sample holds no vectors")
    check_image_count(len(sample.vectors), req.images_per_vector, settings)
    try:
        job = job_from_sample(
            sample,
            dataset=req.dataset,
            model=settings.model,
            decode=req,
            images_per_vector=req.images_per_vector,
            seed=req.seed,
        )
    except pydantic.ValidationError as exc:  # e.g. a stored sample with non-finite vectors
        raise InputError.from_pydantic(exc) from exc
    return _with_init_images(_owned(job, caller), settings, caller)


def _owned(job: DecodeJob, caller: KeyGrant) -> DecodeJob:
    """The job with its tenant recorded; default's is left unrecorded (what no tenant means), as before tenants."""
    job.tenant = None if caller.tenant == DEFAULT_TENANT else caller.tenant
    return job


def _with_init_images(job: DecodeJob, settings: Settings, caller: KeyGrant) -> DecodeJob:
    """An img2img job with its init images assigned; any other job as it is (the store is not opened for it)."""
    return job if job.init_images is None else assign_init_images(job, _store(str(settings.store)), caller)


@lru_cache(maxsize=4)
def _store(url: str) -> ResultStore:
    """One store per URL: it keeps the init datasets' parsed manifest shards between requests."""
    return ResultStore(url)


def assign_init_images(job: DecodeJob, store: ResultStore, caller: KeyGrant = LOCAL) -> DecodeJob:
    """Give each item of an img2img job its init image: one of its class's images in the init dataset.

    The image is picked by the item's seed among the class's stored images in path order, so the same
    request (and store) picks the same images; the path travels in the payload, so a retry starts from
    the same image whatever the store holds by then. Only images the caller sees are candidates.
    """
    if job.init_images is None:
        return job
    name = job.init_images.dataset
    by_class: dict[str, list[str]] = defaultdict(list)
    for row in {row["image_id"]: row for row in reversed(store.manifest_rows(name))}.values():
        if caller.sees(row.get("tenant")):
            by_class[row["class_name"]].append(row["path"])
    if not by_class:
        raise InputError("init_images.dataset", f"no dataset {name!r} with images in the result store")
    missing = sorted({item.class_name for item in job.items} - set(by_class))
    if missing:
        raise InputError(
            "init_images.dataset",
            f"dataset {name!r} has no images of class {', '.join(map(repr, missing[:5]))} "
            f"(it has {', '.join(map(repr, sorted(by_class)[:10]))})",
        )
    paths = {c: sorted(p) for c, p in by_class.items()}
    for item in job.items:
        choices = paths[item.class_name]
        item.init_image = choices[item.seed % len(choices)]
    return job


def enqueue_generation(job: DecodeJob, connection: redis.Redis, settings: Settings) -> list[str]:
    """Queue ``job`` as RQ jobs of ``settings.images_per_job`` images, all or none."""
    return enqueue_decode(job, connection, settings=settings)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
IMPORT_BATCH = 256  # images per store write (one manifest shard each, so a large folder is written in linear time)


def import_image_folder(folder: str | os.PathLike, dataset: str, store: ResultStore) -> dict:
    """Store a folder of real images (one subfolder per class name) as a result-store dataset: img2img's init images.

    Each image keeps its pixels (RGB PNG) under ``<dataset>/<class>/real-<digest>.png`` with a manifest row
    (sampler ``real``, ``vector_id`` its file path in the folder). Ids are digests of class and bytes, so a
    re-import stores nothing twice. Returns ``{"written", "skipped", "classes": {name: count}}``.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError("folder", f"{root} is not a folder")
    dataset = validate_dataset_name(dataset)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [(c, f) for c in classes for f in sorted((root / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise InputError("folder", f"{root} holds no images in class subfolders ({', '.join(IMAGE_SUFFIXES)})")
    names = {c: validate_name("folder", c) for c in classes}
    written = 0
    for k, part in enumerate(batches(files, IMPORT_BATCH)):
        pairs = [_real_image(root, names, classes.index(c), f, f"import-{k}") for c, f in part]
        written += sum(store.write_images(dataset, pairs))
    counts = Counter(names[c] for c, _ in files)
    return {"written": written, "skipped": len(files) - written, "classes": dict(counts)}


def _real_image(
    root: Path, names: dict[str, str], index: int, path: Path, job_id: str
) -> tuple[ImageRecord, PILImage.Image]:
    data = path.read_bytes()
    try:
        with PILImage.open(io.BytesIO(data)) as opened:
            image = opened.convert("RGB")
    except (PILImage.UnidentifiedImageError, OSError) as exc:
        raise InputError("folder", f"{path} is not a readable image ({exc})") from None
    name = names[path.parent.name]
    digest = hashlib.sha256(name.encode() + b"\x1f" + data).hexdigest()[:20]
    record = ImageRecord(
        image_id=f"real-{digest}",
        class_index=index,
        class_name=name,
        vector_id=f"file:{path.relative_to(root).as_posix()}",
        sampler="real",
        seed=0,
        model="",
        prompt="",
        job_id=job_id,
    )
    return record, image
