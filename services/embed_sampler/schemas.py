"""Request and response models of the embed_sampler API (also its OpenAPI docs).

The models check only what JSON itself can get wrong (types, shapes, finite
numbers in ``params``); limits, sampler names and everything that needs the fit
are checked once, in ``oodsynth.service``, for every surface alike, and answer
with the same ``detail[].loc`` shape.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from oodsynth.errors import InputError
from oodsynth.names import MAX_NAME_LENGTH, validate_name
from oodsynth.samplers import DEFAULT_METHOD, SAMPLERS


def _non_finite_path(value: Any, path: str = "") -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return path or "value"
    if isinstance(value, dict):
        for k, v in value.items():
            found = _non_finite_path(v, f"{path}.{k}" if path else str(k))
            if found:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _non_finite_path(v, f"{path}[{i}]")
            if found:
                return found
    return None


def _fit_name(value: str) -> str:
    try:
        return validate_name("fit", value)
    except InputError as exc:  # pydantic names the field itself
        raise ValueError(exc.message) from None


FitName = Annotated[
    StrictStr,
    Field(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        description="Name of a stored fit (names.validate_name).",
        examples=["cifar100"],
    ),
    AfterValidator(_fit_name),
]


class SampleRequest(BaseModel):
    """Draw outlier vectors from the low-density regions of a stored fit's classes."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # `seed: false` or `n_per_class: "5"` are mistakes, not numbers
        json_schema_extra={
            "examples": [
                {
                    "fit": "cifar100",
                    "method": DEFAULT_METHOD,
                    "n_per_class": 100,
                    "classes": ["apple", 3],
                    "seed": 0,
                    "params": {},
                }
            ]
        },
    )

    fit: FitName
    method: str = Field(
        DEFAULT_METHOD,
        description=f"Sampler, one of {', '.join(SAMPLERS)}; {DEFAULT_METHOD} (chosen by measured OOD gain) when left out.",
        examples=[DEFAULT_METHOD],
    )
    n_per_class: int = Field(
        json_schema_extra={"minimum": 1},  # stated, and checked by the library with its own message (every surface)
        description="Vectors per class; at least 1, at most settings max_n_per_class (default 10,000).",
        examples=[100],
    )
    classes: list[StrictInt | StrictStr] | None = Field(
        None, description="Class indices and/or names to sample; all classes when left out."
    )
    seed: int | None = Field(
        None, ge=0, lt=2**63, description="Random seed; one is chosen (and returned) when left out."
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Sampler parameters; see each sampler's defaults.")
    scale_to_anchor: bool = Field(True, description="Rescale vectors to the norm of their class anchor T(y).")
    include_vectors: bool = Field(
        True, description="Return vectors and per-vector diagnostics; false returns only the id and summaries."
    )
    knn_diagnostics: bool = Field(
        False, description="Also compute the k-NN distance to the ID bank for methods that do not need the bank."
    )

    @field_validator("params")
    @classmethod
    def _finite(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = _non_finite_path(v)
        if bad:
            raise ValueError(f"{bad} must be a finite number")
        return v


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="Where the problem is: body, path, query or header, then the field.")
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error answer: ``detail`` lists the problems found, the first one first."""

    detail: list[ErrorItem]


class ClassInfo(BaseModel):
    index: int
    name: str
    n: int = Field(description="Vectors of this class in the sample.")


class DiagnosticStats(BaseModel):
    mean: float | None
    min: float | None
    max: float | None


class SampleResponse(BaseModel):
    """A drawn sample. Non-finite numbers (e.g. k-NN distance without a bank) are ``null``."""

    sample_id: str = Field(description="Id under which the sample is kept (for GET /samples/{id} and /generate).")
    fit: str
    method: str
    params: dict[str, Any] = Field(description="The sampler parameters used, defaults filled in.")
    seed: int
    dim: int
    n: int = Field(description="Number of vectors.")
    classes: list[ClassInfo] = Field(description="The sampled classes, in request order.")
    class_index: list[int] | None = Field(description="Class index of each vector (null unless include_vectors).")
    vectors: list[list[float | None]] | None = Field(description="(n, dim) vectors (null unless include_vectors).")
    diagnostics: dict[str, list[float | None]] | None = Field(
        description="Per-vector log_density, id_percentile, knn_distance, cos_to_mean (null unless include_vectors)."
    )
    diagnostics_summary: dict[str, DiagnosticStats] = Field(description="Mean/min/max of each diagnostic.")
    evicted: list[str] | None = Field(
        None,
        description="POST /sample only, and only when it evicted any: ids of the caller's own samples evicted to "
        "keep its tenant within OODSYNTH_SAMPLE_BUDGET_BYTES (they answer 410 from now on).",
    )


class ClassSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    index: int
    name: str
    n: int
    kappa: float | None = Field(None, description="vMF concentration (vmf fits).")
    variance: float | None = Field(None, description="Mean per-dimension variance (Gaussian fits).")
    logpdf_quantiles: dict[str, float] = Field(description="Quantiles of the ID log-densities of this class.")


class FitSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    version: str = Field(description="Changes on every refit (also sent as the ETag header).")
    created_at: str
    kind: str
    dim: int
    n_classes: int
    n_bank: int = Field(description="Feature vectors in the bank.")
    classes: list[ClassSummary]


class FitList(BaseModel):
    fits: list[str]


class RedisMemory(BaseModel):
    used_bytes: int
    max_bytes: int | None = Field(description="Redis maxmemory; null when unlimited.")
    fraction: float | None = Field(description="used / max; /healthz says degraded from 0.9.")
    policy: str | None = Field(description="maxmemory-policy (noeviction refuses writes when full).")


class Health(BaseModel):
    status: str = Field(description="ok, degraded (Redis memory pressure) or unavailable.")
    redis: str = Field(description="ok, memory_pressure, out_of_memory, or the error type.")
    memory: RedisMemory | None = None
