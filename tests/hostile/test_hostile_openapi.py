"""The OpenAPI document tells the truth: the errors routes answer and the constraints handlers enforce."""

from __future__ import annotations

import pytest


@pytest.fixture
def spec(api) -> dict:
    return api.get("/openapi.json").json()


@pytest.mark.parametrize(
    "method, path, codes",
    [
        ("post", "/fits", {401, 403, 408, 413, 422, 429, 503}),
        ("post", "/sample", {401, 403, 408, 413, 422, 429, 503}),
        ("post", "/features", {401, 403, 408, 413, 422, 429, 503}),
        ("post", "/generate", {401, 403, 408, 413, 422, 503}),
        ("get", "/fits", {401, 403, 503}),
        ("delete", "/fits/{name}", {401, 403, 404, 503}),
        ("get", "/jobs/{job_id}", {401, 403, 404, 503}),
        ("get", "/healthz", {503}),
    ],
)
def test_error_answers_are_documented(spec, method, path, codes):
    """The document listed no 401/403 answers."""
    documented = {int(c) for c in spec["paths"][path][method]["responses"] if c.isdigit()}
    assert codes <= documented, codes - documented


def test_schema_constraints_match_the_handlers(spec, api):
    """The schema allowed `fit: ""` and `n_per_class: 0`, which the API then rejected."""
    schemas = spec["components"]["schemas"]
    fit = schemas["SampleRequest"]["properties"]["fit"]
    n = schemas["SampleRequest"]["properties"]["n_per_class"]
    assert fit["minLength"] == 1 and n["minimum"] == 1 and n["maximum"] == 10_000  # the settings' cap
    gen = schemas["GenerateRequest"]["properties"]
    assert gen["height"]["multipleOf"] == 8 and gen["height"]["maximum"] == 1024  # 1024 x 1024 pixels per image
    assert gen["steps"]["maximum"] == 200 and gen["prompt_template"]["maxLength"] == 1000
    for body, field in (({"fit": "", "n_per_class": 1}, "fit"), ({"fit": "toy", "n_per_class": 0}, "n_per_class")):
        r = api.post("/sample", json=body)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", field], r.text
