"""Schemathesis over /openapi.json: no 500 and no answer that breaks its documented schema, on anything generated.

A fit named after the schema's own example ("cifar100") is uploaded first, so
generated and example requests reach the samplers and the queue, not only
the 404 path. Caps are small, so each case is quick: the whole run takes
~30 s on 2 busy cores. The only 5xx allowed is a typed 503 that names its
cause: no encoder configured for POST /features, or a sampler past its time budget.
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, settings
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from oodsynth.config import get_settings
from services.embed_sampler.app import create_app
from tests.helpers.toy_banks import toy_bank

app = create_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
EXPECTED_503 = {("POST", "/features"): ["encoder_checkpoint"], ("POST", "/sample"): ["sample_time_budget_s"]}


@pytest.fixture
def fuzz_env(redis_url, monkeypatch):
    for name, value in {
        "MAX_N_PER_CLASS": 20,
        "MAX_VECTORS_PER_SAMPLE": 100,
        "SAMPLE_TIME_BUDGET_S": 2,
        "MAX_IMAGES_PER_REQUEST": 50,
        "MAX_REQUEST_BYTES": 256 * 1024,
        "MAX_UPLOAD_BYTES": 256 * 1024,
    }.items():
        monkeypatch.setenv(f"OODSYNTH_{name}", str(value))
    get_settings.cache_clear()
    with TestClient(app) as client:
        r = client.post(
            "/fits",
            data={"name": "cifar100"},
            files={"file": ("bank.npz", toy_bank().to_bytes(), "application/octet-stream")},
        )
        assert r.status_code == 201, r.text


def no_server_error(ctx, response, case) -> None:
    """No 500 ever; a 503 only where it is designed, with its typed detail."""
    if response.status_code < 500:
        return
    detail = response.json().get("detail") if "json" in response.headers.get("content-type", [""])[0] else None
    allowed = EXPECTED_503.get((case.method.upper(), case.path))
    assert response.status_code == 503 and allowed and detail and detail[0]["loc"] == allowed, (
        f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}"
    )


@schema.parametrize()
@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_no_5xx_and_schema_conformance(case, fuzz_env):
    case.call_and_validate(checks=[no_server_error, response_schema_conformance, content_type_conformance])
