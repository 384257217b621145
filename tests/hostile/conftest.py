"""The hostile suite: one test per finding of the hostile runs, so none can come back unnoticed.

Each test names the finding it keeps closed in its docstring. Fixtures: an API
(real FastAPI app, real Redis) with small caps, and helpers to upload banks.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from oodsynth.config import get_settings
from services.embed_sampler.app import create_app

SMALL_CAPS = {
    "MAX_REQUEST_BYTES": 64 * 1024,
    "MAX_UPLOAD_BYTES": 256 * 1024,
    "MAX_BANK_BYTES": 128 * 1024,
    "SAMPLE_TIME_BUDGET_S": 2.0,
    "MAX_JSON_VALUES": 5000,
}


@pytest.fixture
def caps(redis_url, monkeypatch):
    for name, value in SMALL_CAPS.items():
        monkeypatch.setenv(f"OODSYNTH_{name}", str(value))
    get_settings.cache_clear()


@pytest.fixture
def api(caps):
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        yield client
