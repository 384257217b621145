"""The JSON payload of one decode job (API -> Redis -> worker), with the limits both sides enforce.

A payload is plain JSON (RQ's JSONSerializer), validated again by the worker,
so a job written by an older or foreign client fails loudly with the field
named instead of decoding garbage.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from ..api_keys import TENANT_PATTERN
from ..decoding.presets import (  # noqa: F401  (the payload validates against them)
    DEFAULT_PRESET,
    DEFAULT_PROMPT_TEMPLATE,
    DEFAULT_STRENGTH,
    PRESETS,
    SCHEDULERS,
    TOKEN_FIELD,
    strength_error,
)
from ..errors import InputError
from ..names import validate_name
from ..store.results import validate_dataset_name
from .image_ids import image_recipe, image_seed_for, recipe_image_id

# Limits of the job model itself, the same for the API (on the request) and the worker (on the payload).
# The configurable caps (steps, pixels, images) are settings, checked by ``check_decode_limits`` on both sides.
MAX_PROMPT_CHARS = 1000  # CLIP reads 77 tokens; a longer template only inflates every queued job
MAX_VECTOR_DIM = 16_384  # SD's text encoders take 768-1280; the cap keeps one item's vector bounded
MAX_JOB_BYTES = 64 * 2**20  # a stored job payload (the worker refuses larger ones before deserialising)
MAX_PIXELS_BOUND = 2048 * 2048  # no setting may raise the pixel cap past the model's own bound


PACKED_VECTOR_PREFIX = "f32le-b64:"


def pack_vector(vector: np.ndarray | Sequence[float]) -> str:
    """A vector as the queue payload carries it: its float32 little-endian bytes in base64, with a prefix.

    Exact for float32, 4/3 byte per byte, and about 30x cheaper to write than the decimal text plus the zlib
    pass that text needed (0.05 ms against 1.5 ms for 10 x 768-d, measured): that pass was the largest part
    of ``POST /generate``'s CPU. Still plain JSON, so any RQ ``JSONSerializer`` reads the payload.
    """
    return PACKED_VECTOR_PREFIX + base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def unpack_vector(text: str) -> list[float]:
    """The floats of ``pack_vector``'s text; ``ValueError`` when it is not such a text."""
    if not text.startswith(PACKED_VECTOR_PREFIX):
        raise ValueError(f"a packed vector starts with {PACKED_VECTOR_PREFIX!r}")
    try:
        raw = base64.b64decode(text[len(PACKED_VECTOR_PREFIX) :], validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {exc}") from None
    if len(raw) % 4:
        raise ValueError(f"{len(raw)} bytes is not a whole number of float32 values")
    return np.frombuffer(raw, dtype="<f4").tolist()


class DecodeItem(BaseModel):
    """One image to decode: its own vector, class, seed and provenance."""

    model_config = ConfigDict(extra="forbid")

    image_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")
    vector_id: str = Field(min_length=1, max_length=256)
    # allow_inf_nan=False per element: pydantic-core checks finiteness in Rust, ~4x faster per image than a
    # Python loop over the list (measured 0.068 -> 0.015 ms per 768-d vector), and names the bad position
    vector: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(min_length=1, max_length=MAX_VECTOR_DIM)
    class_index: int = Field(ge=0, lt=2**31)
    class_name: str = Field(min_length=1, description="A folder in the store: follows names.validate_name.")
    seed: int = Field(ge=0, lt=2**63)
    sampler: str = Field(max_length=64)
    sampler_params: dict[str, Any] = Field(default_factory=dict)
    diagnostics: dict[str, Any] = Field(default_factory=dict)
    # img2img: the store path of its init image (left out of a payload when unused: older workers read it)
    init_image: str | None = Field(None, max_length=1024, exclude_if=lambda v: v is None)

    # the vector it was built from and that vector's pack_vector text (build_items sets it from the float32 row)
    _packed: tuple[list[float], str] | None = PrivateAttr(None)

    @field_validator("class_name")
    @classmethod
    def _class_name(cls, v: str) -> str:
        try:
            return _valid_class_name(v)
        except InputError as exc:
            raise ValueError(exc.message) from None

    @field_validator("vector", mode="before")
    @classmethod
    def _unpack(cls, v: object) -> object:
        """Queue payloads carry ``pack_vector`` text; a list of numbers is accepted too (older payloads)."""
        return unpack_vector(v) if isinstance(v, str) else v

    def packed_vector(self) -> str:
        """``pack_vector(self.vector)``: the text packed from the float32 row the item was built from while the
        vector still equals it, which costs a list comparison instead of turning 768 Python floats back into
        float32 (the largest part of enqueueing a job's payload)."""
        if self._packed is not None and self._packed[0] == self.vector:
            return self._packed[1]
        return pack_vector(self.vector)


@lru_cache(maxsize=1024)
def _valid_class_name(name: str) -> str:
    """``validate_name`` of a class name, once per name: every image of a class carries it."""
    return validate_name("class_name", name)


def dataset_name_field(v: str) -> str:
    """``validate_dataset_name`` for a pydantic validator (pydantic adds the field itself)."""
    try:
        return validate_dataset_name(v)
    except InputError as exc:
        raise ValueError(exc.message) from None


class InitImages(BaseModel):
    """Where img2img starts: a result-store dataset; an image of class c starts from one of its class-c images."""

    model_config = ConfigDict(extra="forbid")

    dataset: Annotated[str, AfterValidator(dataset_name_field)] = Field(
        description="A dataset in the result store, its images under <dataset>/<class name>/."
    )


class DecodeSettings(BaseModel):
    """Diffusion settings shared by every image of a request (and checked before anything is queued)."""

    model_config = ConfigDict(extra="forbid")

    prompt_template: str = Field(
        DEFAULT_PROMPT_TEMPLATE,
        max_length=MAX_PROMPT_CHARS,
        # the schema states what _template checks (with its own message): {token} exactly once
        json_schema_extra={"pattern": r"^(?:(?!\{token\})[\s\S])*\{token\}(?:(?!\{token\})[\s\S])*$"},
        description="Must contain {token} once.",
    )
    steps: int = Field(50, ge=1, le=1000, description="Denoising steps.")
    guidance_scale: float = Field(7.5, ge=0.0, le=100.0, description="Classifier-free guidance scale.")
    # multipleOf is stated in the schema and checked by _multiple_of_8, whose message every surface shares.
    height: int = Field(
        512, ge=8, le=2048, json_schema_extra={"multipleOf": 8}, description="Decode height in pixels (multiple of 8)."
    )
    width: int = Field(
        512, ge=8, le=2048, json_schema_extra={"multipleOf": 8}, description="Decode width in pixels (multiple of 8)."
    )
    output_size: int = Field(256, ge=8, le=2048, description="Stored images are resized to this square size.")
    scheduler: str = Field("pndm", description=f"One of {list(SCHEDULERS)}.")
    preset: str = Field(
        DEFAULT_PRESET,
        description=f"One of {list(PRESETS)}: 'exact' decodes with the settings as "
        "given; 'fast' uses DPM-Solver++ at half the steps and reuses the UNet's deep features "
        "(one full pass every 2 steps).",
    )
    # The img2img fields are left out of a dumped payload when unused, so a worker of the version before reads it.
    init_images: InitImages | None = Field(
        None,
        exclude_if=lambda v: v is None,
        description="img2img (SDEdit): start each image from a real image of its class in this store dataset "
        "(chosen by the image's seed), noised to `strength`, instead of from pure noise.",
    )
    strength: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        validate_default=True,
        exclude_if=lambda v: v is None,
        description=f"With init_images: how far the init image is noised (int(steps x strength) steps run; "
        f"default {DEFAULT_STRENGTH}).",
    )

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, v: str) -> str:
        if v.count(TOKEN_FIELD) != 1:
            raise ValueError(f"must contain {TOKEN_FIELD} exactly once, got {v!r}")
        return v

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        if v % 8:
            raise ValueError(f"must be a multiple of 8 (the VAE downsamples by 8), got {v}")
        return v

    @field_validator("scheduler", "preset")
    @classmethod
    def _known_choice(cls, v: str, info) -> str:
        choices = {"scheduler": SCHEDULERS, "preset": PRESETS}[info.field_name]
        if v not in choices:
            raise ValueError(f"unknown {info.field_name} {v!r}; choose one of {list(choices)}")
        return v

    @field_validator("strength")
    @classmethod
    def _strength(cls, v: float | None, info) -> float | None:
        """Only with init_images (then ``DEFAULT_STRENGTH`` when left out), and at least one step after the preset."""
        if "init_images" not in info.data:
            return v  # init_images failed: its own error says so
        if info.data["init_images"] is None:
            if v is not None:
                raise ValueError("only used with init_images (img2img)")
            return None
        v = DEFAULT_STRENGTH if v is None else v
        steps, preset = info.data.get("steps"), info.data.get("preset")
        message = strength_error(v, PRESETS[preset].steps(steps)) if steps and preset in PRESETS else None
        if message:
            raise ValueError(message)
        return v

    def decode_settings(self) -> dict[str, Any]:
        """The settings as keyword arguments of ``OutlierDecoder.decode`` (the init images are the worker's to load).

        The default preset and an unused strength are left out, so an
        ``exact`` text-to-image job names the same image ids as the same job
        made before presets and img2img existed (its stored images are still
        found and skipped).
        """
        settings = {name: getattr(self, name) for name in DecodeSettings.model_fields if name != "init_images"}
        if settings["preset"] == DEFAULT_PRESET:
            del settings["preset"]
        if settings["strength"] is None:
            del settings["strength"]
        return settings

    def request_settings(self) -> dict[str, Any]:
        """``decode_settings`` plus the init image set: a job's shared fields and the recipe of its image ids."""
        settings = self.decode_settings()
        if self.init_images is not None:
            settings["init_images"] = self.init_images.model_dump()
        return settings


def check_decode_limits(decode: DecodeSettings, settings) -> None:
    """Steps, pixels per image and output pixels under the settings' caps (``oodsynth.config.Settings``).

    The API checks a request with it before anything is queued; the worker checks each payload with it
    again before any work, so a job written straight to Redis meets the same caps.
    """
    if decode.steps > settings.max_decode_steps:
        raise InputError(
            "steps",
            f"{decode.steps} is above the cap of {settings.max_decode_steps} (settings OODSYNTH_MAX_DECODE_STEPS)",
        )
    cap = min(settings.max_decode_pixels, MAX_PIXELS_BOUND)
    side = pixel_side(cap)
    for field in ("height", "width", "output_size"):
        value = getattr(decode, field)
        if value > side:
            raise InputError(
                field,
                f"{value} is above {side} pixels per side: the cap of {cap} pixels per image "
                "(settings OODSYNTH_MAX_DECODE_PIXELS) allows a square of that side at most",
            )


def pixel_side(max_pixels: int) -> int:
    """The largest side (a multiple of 8) a square image of at most ``max_pixels`` pixels may have.

    A per-side cap, not one on height x width: it is what a JSON schema can state (``maximum``), so the
    OpenAPI document says exactly what the check enforces."""
    return 8 * (math.isqrt(max_pixels) // 8)


def check_job_limits(job: DecodeJob, settings) -> None:
    """``check_decode_limits`` and the image count of one job (the worker's check before any work)."""
    check_decode_limits(job, settings)
    if len(job.items) > settings.max_images_per_request:
        raise InputError(
            "items",
            f"{len(job.items)} images in one job, over the cap of {settings.max_images_per_request} "
            "(settings OODSYNTH_MAX_IMAGES_PER_REQUEST)",
        )


class DecodeJob(DecodeSettings):
    """A batch of images decoded by one worker call with shared diffusion settings."""

    dataset: str
    model: str = Field(min_length=1)
    items: list[DecodeItem] = Field(min_length=1)
    verify_fit: str | None = Field(
        None,
        description="the fit the vectors came from: a worker with an encoder "
        "re-encodes each image and records its ID percentile (oodsynth.decoding.verification)",
    )
    tenant: str | None = Field(None, pattern=TENANT_PATTERN, exclude_if=lambda v: v is None)  # None: default, left out

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return dataset_name_field(v)

    @model_validator(mode="after")
    def _consistent(self) -> DecodeJob:
        dims = {len(item.vector) for item in self.items}
        if len(dims) != 1:
            raise ValueError(f"items: vectors have different dimensions {sorted(dims)}")
        ids = [item.image_id for item in self.items]
        if len(set(ids)) != len(ids):
            raise ValueError("items: image_id values must be unique within a job")
        return self

    def prompt(self, token: str) -> str:
        return self.prompt_template.replace(TOKEN_FIELD, token)


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def build_items(
    *,
    dataset: str,
    vectors: np.ndarray,
    class_index: np.ndarray,
    class_names: Sequence[str],
    vector_ids: Sequence[str],
    sampler: str,
    sampler_params: Mapping[str, Any] | None = None,
    diagnostics: Mapping[str, np.ndarray] | None = None,
    images_per_vector: int = 1,
    seed: int | None = None,
    decode: Mapping[str, Any] | None = None,
    model: str | None = None,
) -> list[DecodeItem]:
    """One ``DecodeItem`` per (vector, repeat), with stable ids and seeds; vector-major order.

    Pass the job's ``decode`` settings and ``model`` so they are part of the image ids.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    diagnostics = diagnostics or {}
    recipe = image_recipe(seed, decode, model)
    items = []
    for i, (vector, c, vector_id) in enumerate(zip(vectors, np.asarray(class_index), vector_ids)):
        diag = {name: _finite_or_none(values[i]) for name, values in diagnostics.items()}
        as_list = vector.tolist()
        packed = (as_list, pack_vector(vector))
        for repeat in range(images_per_vector):
            image_id = recipe_image_id(dataset, vector_id, repeat, recipe)
            item = DecodeItem(
                image_id=image_id,
                vector_id=vector_id,
                vector=as_list,
                class_index=int(c),
                class_name=str(class_names[int(c)]),
                seed=image_seed_for(image_id, seed),
                sampler=sampler,
                sampler_params=dict(sampler_params or {}),
                diagnostics=diag,
            )
            item._packed = packed
            items.append(item)
    return items


def job_from_sample(
    sample: Any,
    *,
    dataset: str,
    model: str,
    decode: DecodeSettings | None = None,
    images_per_vector: int = 1,
    seed: int | None = None,
) -> DecodeJob:
    """The ``DecodeJob`` for every vector of a stored sample (``oodsynth.state.samples.StoredSample``).

    Vector ids are ``<sample_id>:<row>``, so re-submitting a sample with the
    same seed and settings reproduces the same image ids and seeds.
    """
    decode = decode or DecodeSettings()
    settings = decode.request_settings()
    items = build_items(
        dataset=dataset,
        vectors=sample.vectors,
        class_index=sample.class_index,
        class_names=sample.class_names,
        vector_ids=[f"{sample.sample_id}:{i}" for i in range(len(sample.vectors))],
        sampler=sample.method,
        sampler_params=sample.params,
        diagnostics=sample.diagnostics,
        images_per_vector=images_per_vector,
        seed=seed,
        decode=settings,
        model=model,
    )
    return DecodeJob(dataset=dataset, model=model, items=items, verify_fit=sample.fit_name, **settings)
