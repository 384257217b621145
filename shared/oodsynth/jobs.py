"""The JSON payload of one decode job (API -> Redis -> worker), and how images are named.

A payload is plain JSON (RQ's JSONSerializer), validated again by the worker,
so a job written by an older or foreign client fails loudly with the field
named instead of decoding garbage.

Image ids and seeds are derived from what the image *is* (dataset, vector id,
repeat index, request seed), never from time or position in the queue, so a
retried or re-submitted job reproduces the same files and the store can skip
images it already holds.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .store import validate_dataset_name

SCHEDULERS = ("pndm", "ddim", "euler", "euler_a", "dpm")
TOKEN_FIELD = "{token}"


def image_id_for(dataset: str, vector_id: str, repeat: int) -> str:
    """Stable id of the ``repeat``-th image of a vector in a dataset."""
    digest = hashlib.sha256(f"{dataset}\x1f{vector_id}\x1f{repeat}".encode()).hexdigest()[:20]
    return f"img-{digest}"


def image_seed_for(image_id: str, base_seed: int | None) -> int:
    """Per-image diffusion seed (63-bit), reproducible from the image id and the request seed."""
    digest = hashlib.sha256(f"{image_id}\x1f{base_seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class DecodeItem(BaseModel):
    """One image to decode: its own vector, class, seed and provenance."""

    model_config = ConfigDict(extra="forbid")

    image_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    vector_id: str = Field(min_length=1)
    vector: list[float] = Field(min_length=1)
    class_index: int = Field(ge=0)
    class_name: str = Field(min_length=1)
    seed: int = Field(ge=0, lt=2**63)
    sampler: str
    sampler_params: dict[str, Any] = Field(default_factory=dict)
    diagnostics: dict[str, Any] = Field(default_factory=dict)

    @field_validator("vector")
    @classmethod
    def _finite(cls, v: list[float]) -> list[float]:
        bad = [i for i, x in enumerate(v) if not math.isfinite(x)]
        if bad:
            raise ValueError(f"{len(bad)} entries are NaN or inf (first at position {bad[0]})")
        return v


class DecodeJob(BaseModel):
    """A batch of images decoded by one worker call with shared diffusion settings."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    model: str = Field(min_length=1)
    prompt_template: str = "A high-quality image of the {token}"
    steps: int = Field(50, ge=1, le=1000)
    guidance_scale: float = Field(7.5, ge=0.0, le=100.0)
    height: int = Field(512, ge=8, le=2048)
    width: int = Field(512, ge=8, le=2048)
    output_size: int = Field(256, ge=8, le=2048)
    scheduler: str = "pndm"
    items: list[DecodeItem] = Field(min_length=1)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        try:
            return validate_dataset_name(v)
        except ValueError as exc:
            raise ValueError(str(exc).removeprefix("dataset: ")) from None

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

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, v: str) -> str:
        if v not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {v!r}; choose one of {list(SCHEDULERS)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "DecodeJob":
        dims = {len(item.vector) for item in self.items}
        if len(dims) != 1:
            raise ValueError(f"items: vectors have different dimensions {sorted(dims)}")
        ids = [item.image_id for item in self.items]
        if len(set(ids)) != len(ids):
            raise ValueError("items: image_id values must be unique within a job")
        return self

    def prompt(self, token: str) -> str:
        return self.prompt_template.replace(TOKEN_FIELD, token)
