"""The embed_sampler API over a real Redis: fit -> summary -> sample -> stored sample, errors, metrics."""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient

from oodsynth.client import OodsynthClient, OodsynthError, sample_arrays
from oodsynth.state.samples import SampleRegistry
from services.embed_sampler.app import create_app
from services.embed_sampler.state import get_redis_dep
from tests.helpers.toy_banks import toy_bank

make_bank = toy_bank


SAMPLER = "inverse_rejection"  # needs no bank; cheap at this size


def bank_bytes(**kw) -> bytes:
    return make_bank(**kw).to_bytes()


def raw_npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.fixture
def api(redis_url):
    with TestClient(create_app()) as client:
        yield client


def post_fit(api, name="toy", data=None, density="vmf", replace=False):
    return api.post(
        "/fits" + ("?replace=true" if replace else ""),
        data={"name": name, "density": density},
        files={"file": ("bank.npz", data if data is not None else bank_bytes(), "application/octet-stream")},
    )


def test_fit_summary_sample_and_stored_sample(api):
    r = post_fit(api)
    assert r.status_code == 201, r.text
    summary = r.json()
    assert summary["name"] == "toy" and summary["kind"] == "vmf" and summary["n_classes"] == 3
    assert r.headers["location"] == "/fits/toy"

    assert api.get("/fits").json() == {"fits": ["toy"]}
    r = api.get("/fits/toy")
    assert r.status_code == 200
    classes = r.json()["classes"]
    assert [c["name"] for c in classes] == ["class_a", "class_b", "class_c"]
    for c in classes:
        assert c["kappa"] > 1
        q = c["logpdf_quantiles"]
        assert q["0.01"] <= q["0.5"] <= q["0.99"]
    assert api.get("/fits/toy", headers={"If-None-Match": r.headers["etag"]}).status_code == 304

    r = api.post(
        "/sample", json={"fit": "toy", "method": SAMPLER, "n_per_class": 6, "classes": ["class_c", 0], "seed": 3}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["n"] == 12 and body["dim"] == 16 and body["seed"] == 3
    assert body["classes"] == [{"index": 2, "name": "class_c", "n": 6}, {"index": 0, "name": "class_a", "n": 6}]
    vectors = np.array(body["vectors"])
    assert vectors.shape == (12, 16) and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 0.38, rtol=1e-4)  # scaled to ||T(y)||
    assert sorted(body["diagnostics"]) == ["cos_to_mean", "id_percentile", "knn_distance", "log_density"]
    assert body["diagnostics"]["knn_distance"] == [None] * 12  # no bank used: null, never NaN
    assert all(0 <= p <= 100 for p in body["diagnostics"]["id_percentile"])
    assert body["diagnostics_summary"]["knn_distance"] == {"mean": None, "min": None, "max": None}

    again = api.get(f"/samples/{body['sample_id']}")
    assert again.status_code == 200 and again.json() == body
    short = api.get(f"/samples/{body['sample_id']}?include_vectors=false").json()
    assert short["vectors"] is None and short["n"] == 12

    stored = SampleRegistry(get_redis_dep()).get(body["sample_id"])
    np.testing.assert_allclose(stored.vectors, vectors, rtol=1e-6)
    assert stored.class_names == ["class_a", "class_b", "class_c"]


def test_fits_survive_an_app_restart(redis_url):
    with TestClient(create_app()) as first:
        assert post_fit(first, "keep", density="gaussian_diagonal").status_code == 201
    with TestClient(create_app()) as second:
        assert second.get("/fits").json()["fits"] == ["keep"]
        assert second.get("/fits/keep").json()["kind"] == "gaussian_diagonal"
        r = second.post("/sample", json={"fit": "keep", "method": SAMPLER, "n_per_class": 2, "include_vectors": False})
        assert r.status_code == 200 and r.json()["n"] == 6 and r.json()["vectors"] is None


def test_existing_name_is_409_unless_replace(api):
    assert post_fit(api, "dup").status_code == 201
    r = post_fit(api, "dup", density="gaussian_isotropic")
    assert r.status_code == 409 and r.json()["detail"][0]["loc"] == ["body", "name"]
    r = post_fit(api, "dup", density="gaussian_isotropic", replace=True)
    assert r.status_code == 201 and api.get("/fits/dup").json()["kind"] == "gaussian_isotropic"


def _bank_with(**change) -> bytes:
    """A raw (unvalidated) bank .npz with some arrays changed (None drops one)."""
    b = make_bank()
    arrays = {"features": b.features, "labels": b.labels, "anchors": b.anchors, "class_names": b.class_names, **change}
    return raw_npz(**{k: v for k, v in arrays.items() if v is not None})


def _nan_features():
    f = make_bank().features.copy()
    f[3, 2] = np.nan
    return f


FIT_CASES = {  # id: (form, upload, status, a field the loc names)
    "bad name": ({"name": "a/b"}, None, 422, "name"),
    "unknown density": ({"name": "ok", "density": "cauchy"}, None, 422, "density"),
    "nan features": ({"name": "ok"}, lambda: _bank_with(features=_nan_features()), 422, "features"),
    "anchor dimension": ({"name": "ok"}, lambda: _bank_with(anchors=make_bank().anchors[:, :8]), 422, "anchors"),
    "label out of range": ({"name": "ok"}, lambda: _bank_with(labels=make_bank().labels + 5), 422, "labels"),
    "no anchors": ({"name": "ok"}, lambda: _bank_with(anchors=None), 422, "anchors"),
    "not an npz": ({"name": "ok"}, lambda: b"this is not an npz", 422, "file"),
    "empty file": ({"name": "ok"}, lambda: b"", 422, "file"),
}


@pytest.mark.parametrize("form, upload, status, field", FIT_CASES.values(), ids=FIT_CASES.keys())
def test_bad_fit_inputs_answer_4xx_naming_the_field(api, form, upload, status, field):
    data = upload() if upload else bank_bytes()
    r = api.post("/fits", data=form, files={"file": ("b.npz", data)})
    assert r.status_code == status, (form, r.text)
    assert field in r.json()["detail"][0]["loc"], (field, r.text)


def test_a_fit_without_a_file_names_the_file(api):
    r = api.post("/fits", data={"name": "nofile"})
    assert r.status_code == 422 and "file" in r.json()["detail"][0]["loc"]


SAMPLE_CASES = {  # id: (request change, status, a field the loc names)
    "unknown fit": ({"fit": "missing"}, 404, "fit"),
    "bad fit name": ({"fit": "bad/name"}, 422, "fit"),
    "unknown method": ({"method": "nope"}, 422, "method"),
    "zero per class": ({"n_per_class": 0}, 422, "n_per_class"),
    "over the cap": ({"n_per_class": 10_001}, 422, "n_per_class"),
    "not a number": ({"n_per_class": "many"}, 422, "n_per_class"),
    "unknown class name": ({"classes": ["no_such_class"]}, 422, "classes"),
    "class index too big": ({"classes": [3]}, 422, "classes"),
    "negative class index": ({"classes": [-1]}, 422, "classes"),
    "no classes": ({"classes": []}, 422, "classes"),
    "float class": ({"classes": [1.5]}, 422, "classes"),
    "bool class": ({"classes": [True]}, 422, "classes"),
    "unknown param": ({"params": {"no_such_param": 1}}, 422, "params"),
    "params not a dict": ({"params": "x"}, 422, "params"),
    "bad seed": ({"seed": "abc"}, 422, "seed"),
    "unknown field": ({"unexpected": 1}, 422, "unexpected"),
}


@pytest.mark.parametrize("change, status, field", SAMPLE_CASES.values(), ids=SAMPLE_CASES.keys())
def test_bad_sample_inputs_answer_4xx_naming_the_field(api, change, status, field):
    assert post_fit(api, "toy").status_code == 201
    r = api.post("/sample", json={"fit": "toy", "method": SAMPLER, "n_per_class": 2, **change})
    assert r.status_code == status, (change, r.text)
    assert field in r.json()["detail"][0]["loc"], (field, r.text)


def test_bad_sampler_params_and_json(api):
    assert post_fit(api, "toy").status_code == 201
    sample = {"fit": "toy", "method": SAMPLER, "n_per_class": 2}
    # Bad sampler parameter values are re-rooted under params.<name>.
    r = api.post("/sample", json={**sample, "params": {"no_such_param": 1}})
    assert r.json()["detail"][0]["loc"][:3] == ["body", "params", "no_such_param"]
    # NaN literals are not valid JSON numbers for params.
    r = api.post(
        "/sample",
        content=b'{"fit":"toy","method":"%s","n_per_class":2,"params":{"x":NaN}}' % SAMPLER.encode(),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422
    assert api.post("/sample", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422


@pytest.mark.parametrize(
    "path, field", [("/fits/missing", "name"), ("/samples/" + "0" * 32, "sample_id"), ("/samples/xyz", "sample_id")]
)
def test_unknown_names_answer_404_naming_the_path_field(api, path, field):
    r = api.get(path)
    assert r.status_code == 404 and r.json()["detail"][0]["loc"] == ["path", field]


def test_deleting_an_unknown_fit_is_404(api):
    assert api.delete("/fits/missing").status_code == 404


def test_cap_on_n_per_class_is_configurable(api, settings_env):
    assert post_fit(api).status_code == 201
    settings_env(MAX_N_PER_CLASS=5)
    r = api.post("/sample", json={"fit": "toy", "method": SAMPLER, "n_per_class": 6})
    assert r.status_code == 422 and "cap of 5" in r.json()["detail"][0]["msg"]


def test_cap_on_total_vectors_counts_the_classes(api, settings_env):
    assert post_fit(api).status_code == 201
    settings_env(MAX_VECTORS_PER_SAMPLE=5)
    one_class = api.post("/sample", json={"fit": "toy", "method": SAMPLER, "n_per_class": 5, "classes": [0]})
    assert one_class.status_code == 200, one_class.text
    every_class = api.post("/sample", json={"fit": "toy", "method": SAMPLER, "n_per_class": 5})
    assert every_class.status_code == 422
    detail = every_class.json()["detail"][0]
    assert detail["loc"] == ["body", "n_per_class"] and "cap of 5" in detail["msg"]


def counter_value(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_and_health(api):
    before = api.get("/metrics").text
    assert post_fit(api).status_code == 201
    assert api.post("/sample", json={"fit": "toy", "method": SAMPLER, "n_per_class": 4}).status_code == 200
    after = api.get("/metrics").text
    assert (
        counter_value(after, "oodsynth_samples_drawn_total", method=SAMPLER)
        - counter_value(before, "oodsynth_samples_drawn_total", method=SAMPLER)
        == 12
    )
    assert (
        counter_value(after, "oodsynth_fits_total", density="vmf")
        >= counter_value(before, "oodsynth_fits_total", density="vmf") + 1
    )
    labels = {"method": "POST", "route": "/sample", "status": "200"}
    assert (
        counter_value(after, "oodsynth_http_requests_total", **labels)
        == counter_value(before, "oodsynth_http_requests_total", **labels) + 1
    )

    health = api.get("/healthz").json()
    assert (health["status"], health["redis"], health["memory"]["max_bytes"]) == ("ok", "ok", None)
    spec = api.get("/openapi.json").json()
    assert {"/fits", "/fits/{name}", "/sample", "/samples/{sample_id}", "/healthz", "/metrics"} <= set(spec["paths"])
    assert api.get("/docs").status_code == 200


def test_python_client_reports_the_field(api):
    client = OodsynthClient("http://testserver", http=api)
    summary = client.fit("viaclient", make_bank(), "gaussian_full")
    assert summary["kind"] == "gaussian_full" and client.list_fits() == ["viaclient"]
    body = client.sample("viaclient", SAMPLER, 3, seed=1)
    vectors, class_index, diagnostics = sample_arrays(body)
    assert vectors.shape == (9, 16) and class_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert np.isnan(diagnostics["knn_distance"]).all() and not math.isnan(diagnostics["log_density"][0])
    with pytest.raises(OodsynthError) as exc:
        client.sample("viaclient", SAMPLER, 3, classes=["zebra"])
    assert exc.value.status == 422 and exc.value.field == "classes[0]"
    with pytest.raises(OodsynthError) as exc:
        client.get_fit("nothing")
    assert exc.value.status == 404 and exc.value.field == "name"


def test_every_sampler_runs_and_reports_knn_only_with_a_bank(api):
    from oodsynth.samplers import SAMPLERS

    assert post_fit(api, density="gaussian_full").status_code == 201
    for method, cls in SAMPLERS.items():
        for knn in (False, True):
            r = api.post(
                "/sample", json={"fit": "toy", "method": method, "n_per_class": 4, "seed": 0, "knn_diagnostics": knn}
            )
            assert r.status_code == 200, (method, r.text)
            body = r.json()
            assert body["n"] == 12 and np.isfinite(np.array(body["vectors"], dtype=float)).all()
            has_knn = body["diagnostics"]["knn_distance"][0] is not None
            assert has_knn == (cls.needs_bank or knn), method


def test_method_defaults_to_the_measured_best_sampler(api):
    from oodsynth.samplers import DEFAULT_METHOD, SAMPLERS

    assert DEFAULT_METHOD in SAMPLERS
    assert post_fit(api, density="gaussian_full").status_code == 201
    r = api.post("/sample", json={"fit": "toy", "n_per_class": 4, "seed": 0})
    assert r.status_code == 200, r.text
    assert r.json()["method"] == DEFAULT_METHOD and r.json()["n"] == 12


def test_sampler_params_fuzz_never_500(api):
    """Every parameter of every sampler, fed wrong types and edge values: 200 or a 422 under params."""
    from oodsynth.samplers import SAMPLERS

    assert post_fit(api).status_code == 201
    statuses = []
    for method, cls in SAMPLERS.items():
        for name in cls.Params.model_fields:
            for value in ("bad", -1, 0, [5, 1], None, 200):
                r = api.post(
                    "/sample",
                    json={"fit": "toy", "method": method, "n_per_class": 2, "seed": 1, "params": {name: value}},
                )
                statuses.append(r.status_code)
                assert r.status_code in (200, 422), (method, name, value, r.text)
                if r.status_code == 422:
                    assert r.json()["detail"][0]["loc"][:2] == ["body", "params"], r.text
    assert statuses.count(422) > len(statuses) // 2


def test_review_regressions_answer_4xx_not_500(api):
    """Inputs that once reached a 500: a bare .npy as bank, a damaged zip, a sampler giving up, a negative seed."""
    import io

    npy = io.BytesIO()
    np.save(npy, np.zeros((4, 4), np.float32))
    r = post_fit(api, data=npy.getvalue())
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "file", r.text
    r = post_fit(api, data=b"PK\x03\x04" + b"\x00" * 64)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "file", r.text

    assert post_fit(api).status_code == 201
    hopeless = {"eps_percentile": 0, "batch": 1, "max_rounds": 1, "temperature": 0.01}
    r = api.post("/sample", json={"fit": "toy", "method": "inverse_rejection", "n_per_class": 50, "params": hopeless})
    assert r.status_code == 422 and "max_rounds" in r.text, r.text
    r = api.post("/sample", json={"fit": "toy", "method": SAMPLER, "n_per_class": 2, "seed": -1})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "seed"], r.text
