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


def test_a_405_lists_every_method_of_the_path(api):
    """schemathesis: OPTIONS /fits answered 405 with `Allow: POST` only (the first route Starlette tried)."""
    for path, methods in (("/fits", {"GET", "POST"}), ("/fits/x", {"GET", "DELETE"})):
        r = api.options(path)
        assert r.status_code == 405 and set(r.headers["Allow"].split(", ")) == methods, r.headers


def test_a_body_that_is_not_utf8_is_a_422_like_any_bad_json(api):
    """A JSON body of invalid UTF-8 got FastAPI's undocumented bare 400."""
    r = api.post("/sample", content=b"YU\x17v\xefK", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid", r.text


def test_error_answers_of_html_routes_are_documented_as_json(spec):
    """The gallery page documented its 401 as text/html; the error body is JSON."""
    answer = spec["paths"]["/datasets/{name}/gallery"]["get"]["responses"]["401"]
    assert list(answer["content"]) == ["application/json"]


def test_malformed_multipart_is_a_422_naming_the_body(api):
    """schemathesis: a malformed multipart body got an undocumented 400."""
    boundary = "b0undary"
    r = api.post(
        "/fits",
        content=f"--{boundary}\r\n[]--{boundary}--\r\n".encode(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body"], r.text


@pytest.mark.parametrize("template", ["A {token}", "{token}{token}", "no token", "{x} {token}\n", "{tok{token}en}"])
def test_the_prompt_pattern_says_what_the_handler_checks(spec, api, template):
    """schemathesis: a prompt_template without {token} was schema-valid and then refused."""
    import re

    pattern = spec["components"]["schemas"]["GenerateRequest"]["properties"]["prompt_template"]["pattern"]
    r = api.post("/generate", json={"dataset": "d", "sample_id": "0" * 32, "prompt_template": template})
    schema_valid = re.search(pattern, template) is not None
    assert schema_valid == (template.count("{token}") == 1)
    assert (r.status_code == 404) == schema_valid, r.text  # valid: only the sample is unknown
