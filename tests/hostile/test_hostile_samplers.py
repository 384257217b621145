"""Sampler parameters at their extremes: a 422 naming the parameter or finite vectors, never a 500."""

from __future__ import annotations

from hostile_helpers import first_error, post_fit


def test_sphere_hmc_with_a_subnormal_boundary_width_is_a_422_and_the_connection_lives_on(api):
    """boundary_width 5e-324 divided by zero (500), and the client's next request on the connection was reset."""
    assert post_fit(api).status_code == 201
    body = {"fit": "toy", "method": "sphere_hmc", "n_per_class": 2, "params": {"boundary_width": 5e-324}}
    r = api.post("/sample", json=body)
    assert r.status_code == 422 and first_error(r)["loc"] == ["body", "params", "boundary_width"], r.text
    body["params"]["boundary_width"] = 1e-4  # the smallest allowed width runs and gives finite vectors
    r = api.post("/sample", json=body)
    assert r.status_code == 200 and all(v is not None for row in r.json()["vectors"] for v in row), r.text


def test_a_hopeless_rejection_sampler_stops_at_its_budget(api):
    """A temperature of 1e-308 spun for over 600 s: now refused by the bound, and the slowest valid setting
    stops at the time budget with a typed 503."""
    assert post_fit(api).status_code == 201
    r = api.post(
        "/sample",
        json={"fit": "toy", "method": "inverse_rejection", "n_per_class": 5, "params": {"temperature": 1e-308}},
    )
    assert r.status_code == 422 and first_error(r)["loc"] == ["body", "params", "temperature"], r.text
    spin = {"eps_percentile": 0, "temperature": 1e-3, "max_rounds": 100_000, "batch": 16_384}
    r = api.post("/sample", json={"fit": "toy", "method": "inverse_rejection", "n_per_class": 5, "params": spin})
    assert r.status_code == 503 and first_error(r)["loc"] == ["sample_time_budget_s"], r.text


def test_the_time_budget_holds_between_classes_of_one_round(api, settings_env):
    """inverse_rejection at extreme settings ran 74 s against a 20 s budget: the budget was checked once per
    round, and one round drew up to 65,536 proposals for every class. The batch is now at most 16,384 and the
    budget is checked between classes too."""
    import time

    from tests.helpers.toy_banks import toy_bank

    settings_env(SAMPLE_TIME_BUDGET_S=1, MAX_BANK_BYTES=2**21, MAX_UPLOAD_BYTES=2**21)
    bank = toy_bank(n_classes=100, n_per_class=5, dim=768, names=[f"c{i}" for i in range(100)])
    r = post_fit(api, "wide", data=bank.to_bytes())
    assert r.status_code == 201, r.text
    # one round for one class of the same request, timed in the same test: the most the budget may be overrun
    spin = {"eps_percentile": 0, "temperature": 1e-3, "max_rounds": 1, "batch": 16_384}
    one = {"fit": "wide", "method": "inverse_rejection", "n_per_class": 1, "params": spin, "include_vectors": False}
    start = time.monotonic()
    r = api.post("/sample", json={**one, "classes": ["c0"]})
    step = time.monotonic() - start
    assert r.status_code in (200, 422, 503), r.text
    spin = {"eps_percentile": 0, "temperature": 1e-3, "max_rounds": 100_000, "batch": 16_384}
    start = time.monotonic()
    r = api.post(
        "/sample",
        json={"fit": "wide", "method": "inverse_rejection", "n_per_class": 1, "params": spin, "include_vectors": False},
    )
    took = time.monotonic() - start
    assert r.status_code == 503 and first_error(r)["loc"] == ["sample_time_budget_s"], r.text
    bound = 1 + max(1.0, 3 * step)  # the budget, plus about one class's round
    assert took < bound, f"{took:.1f} s against a 1 s budget (bound {bound:.1f} s; one class's round {step:.2f} s)"
