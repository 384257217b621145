"""The same bad request through the library, the API, the Python client and the CLI (in-process and
over the API) fails the same way: same error type, same field, same message, on every surface."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from oodsynth.cli import app as cli_app
from oodsynth.cli import core as cli_core
from oodsynth.client import OodsynthClient
from oodsynth.config import get_settings
from oodsynth.errors import BY_STATUS, InputError, NotFound, OodsynthError, join_loc
from oodsynth.service import GenerateRequest, create_fit, draw_sample, plan_generation
from oodsynth.state.fits import FitRegistry
from oodsynth.state.samples import SampleRegistry
from services.embed_sampler.app import create_app
from tests.helpers.toy_banks import toy_bank

SAMPLER = "inverse_rejection"
runner = CliRunner()

# (request changes, expected error type, field, a piece of the message); caps set in `surfaces`.
SAMPLE_CASES = [
    ({"n_per_class": 6}, InputError, "n_per_class", "6 is above the cap of 5"),
    ({"n_per_class": 0}, InputError, "n_per_class", "must be at least 1"),
    ({"n_per_class": 4}, InputError, "n_per_class", "12 vectors requested (4 per class), above the cap of 10"),
    ({"classes": ["wasp"]}, InputError, "classes[0]", "unknown class name 'wasp'"),
    ({"classes": [7]}, InputError, "classes[0]", "class index 7 is out of range [0, 3)"),
    ({"method": "nope"}, InputError, "method", "unknown sampler 'nope'"),
    ({"params": {"bogus": 1}}, InputError, "params.bogus", "Extra inputs are not permitted"),
    ({"fit": "missing"}, NotFound, "fit", "no fit named 'missing'"),
]


@pytest.fixture
def surfaces(redis_url, monkeypatch, settings_env):
    """An API on the session's Redis with a 3-class fit ``toy``, caps of 5 per class and 10 per sample."""
    settings_env(MAX_N_PER_CLASS=5, MAX_VECTORS_PER_SAMPLE=10, MAX_IMAGES_PER_REQUEST=4)
    client = redis.Redis.from_url(redis_url)
    create_fit(FitRegistry(client), "toy", toy_bank(3, 30, 12, names=["ant", "bee", "cat"]))
    with TestClient(create_app()) as http:
        monkeypatch.setattr(cli_core, "_api_client", lambda url: OodsynthClient(url, http=http))
        yield client, http


def _library(client, request) -> OodsynthError:
    with pytest.raises(OodsynthError) as exc:
        draw_sample(FitRegistry(client), SampleRegistry(client), get_settings(), **request)
    return exc.value


def _http(http, request) -> OodsynthError:
    r = http.post("/sample", json=request)
    first = r.json()["detail"][0]
    return BY_STATUS[r.status_code](join_loc(first["loc"]), first["msg"])


def _client(http, request) -> OodsynthError:
    request = dict(request)
    with pytest.raises(OodsynthError) as exc:
        OodsynthClient(http=http).sample(
            request.pop("fit"), request.pop("method"), request.pop("n_per_class"), **request
        )
    return exc.value


def _cli(request, *api) -> tuple[int, str]:
    args = [
        "sample",
        "--fit",
        request["fit"],
        "--method",
        request["method"],
        "--n-per-class",
        str(request["n_per_class"]),
        "--out",
        "unused.npz",
        *api,
    ]
    for c in request.get("classes") or []:
        args += ["--classes", str(c)]
    for key, value in (request.get("params") or {}).items():
        args += ["-p", f"{key}={value}"]
    r = runner.invoke(cli_app, args)
    return r.exit_code, r.stderr.strip()


@pytest.mark.parametrize(
    "change, kind, field, message", SAMPLE_CASES, ids=[c[2] + ":" + c[3][:20] for c in SAMPLE_CASES]
)
def test_a_bad_sample_request_fails_alike_everywhere(surfaces, change, kind, field, message):
    client, http = surfaces
    request = {"fit": "toy", "method": SAMPLER, "n_per_class": 2, **change}
    errors = {
        "library": _library(client, request),
        "api": _http(http, request),
        "client": _client(http, request),
    }
    for surface, exc in errors.items():
        assert isinstance(exc, kind), (surface, exc)
        assert exc.field == field and message in exc.message, (surface, exc)
    assert errors["api"].message == errors["library"].message == errors["client"].message
    line = f"error: {field}: {errors['library'].message}"
    assert _cli(request) == (2, line)
    assert _cli(request, "--api", "http://testserver") == (2, line)


def test_a_generation_over_the_image_cap_fails_alike_everywhere(surfaces, tmp_path):
    client, http = surfaces
    sample = draw_sample(
        FitRegistry(client), SampleRegistry(client), get_settings(), fit="toy", method=SAMPLER, n_per_class=1, seed=0
    )  # 3 vectors x 2 images > the cap of 4
    request = GenerateRequest(dataset="out", sample_id=sample.sample_id, images_per_vector=2)
    with pytest.raises(InputError) as exc:
        plan_generation(request, FitRegistry(client), SampleRegistry(client), get_settings())
    lib = exc.value
    assert lib.field == "images_per_vector" and "6 images, over the limit of 4" in lib.message
    r = http.post("/generate", json={"dataset": "out", "sample_id": sample.sample_id, "images_per_vector": 2})
    assert r.status_code == 422 and r.json()["detail"][0] == {
        "loc": ["body", "images_per_vector"],
        "msg": lib.message,
        "type": "value_error",
    }
    with pytest.raises(InputError) as exc:
        OodsynthClient(http=http).generate("out", sample_id=sample.sample_id, images_per_vector=2)
    assert (exc.value.field, exc.value.message) == (lib.field, lib.message)
    line = f"error: {lib.field}: {lib.message}"
    for api in ([], ["--api", "http://testserver"]):
        r = runner.invoke(cli_app, ["generate", sample.sample_id, "--dataset", "out", "--images-per-vector", "2", *api])
        assert (r.exit_code, r.stderr.strip()) == (2, line)
    assert http.get("/queue").json()["queues"][0]["queued"] == 0  # nothing was enqueued by any surface


@pytest.mark.parametrize(
    "option, value, field, message",
    [
        ("--height", "60", "height", "must be a multiple of 8 (the VAE downsamples by 8), got 60"),
        ("--scheduler", "nope", "scheduler", "unknown scheduler 'nope'"),
        ("--dataset", "../up", "dataset", "must be one name"),
    ],
)
def test_a_bad_decode_setting_fails_alike_everywhere(surfaces, option, value, field, message):
    client, http = surfaces
    sample = draw_sample(
        FitRegistry(client), SampleRegistry(client), get_settings(), fit="toy", method=SAMPLER, n_per_class=1, seed=0
    )
    body = {
        "dataset": "out",
        "sample_id": sample.sample_id,
        option.lstrip("-"): int(value) if value.isdigit() else value,
    }
    r = http.post("/generate", json=body)
    detail = r.json()["detail"][0]
    assert r.status_code == 422 and join_loc(detail["loc"]) == field and message in detail["msg"], r.text
    with pytest.raises(InputError) as exc:
        OodsynthClient(http=http).generate(**body)
    assert (exc.value.field, exc.value.message) == (field, detail["msg"])
    args = ["generate", sample.sample_id, "--dataset", "out", option, value]
    if option == "--dataset":
        args = ["generate", sample.sample_id, "--dataset", value]
    for api in ([], ["--api", "http://testserver"]):
        r = runner.invoke(cli_app, [*args, *api])
        assert (r.exit_code, r.stderr.strip()) == (2, f"error: {field}: {detail['msg']}"), api
