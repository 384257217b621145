"""Expensive routes run in a bounded pool: when it is full they answer 429 with Retry-After at once."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from hostile_helpers import first_error, post_fit

from oodsynth.config import get_settings

SPIN = {"eps_percentile": 0, "temperature": 1e-3, "max_rounds": 100_000, "batch": 16_384}


@pytest.fixture
def one_slot(monkeypatch, caps):
    monkeypatch.setenv("OODSYNTH_MAX_HEAVY_REQUESTS", "1")
    monkeypatch.setenv("OODSYNTH_SAMPLE_TIME_BUDGET_S", "3")
    get_settings.cache_clear()


def test_a_full_pool_answers_429_with_retry_after_at_once(one_slot):
    """Nothing limited how many /sample ran together: four at the default caps peaked at 3.0 GB."""
    from fastapi.testclient import TestClient

    from services.embed_sampler.app import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as api:
        assert post_fit(api).status_code == 201
        spin = {"fit": "toy", "method": "inverse_rejection", "n_per_class": 5, "params": SPIN}
        slow: list[httpx.Response] = []
        worker = threading.Thread(target=lambda: slow.append(api.post("/sample", json=spin)))
        worker.start()
        time.sleep(1.0)  # the spinning sample holds the one slot
        for call in (
            lambda: api.post("/sample", json={"fit": "toy", "method": "inverse_rejection", "n_per_class": 2}),
            lambda: post_fit(api, "other"),
        ):
            r = call()
            # at once, not queued: answered while the slot's holder still spins (it stops only at its 3 s budget)
            assert worker.is_alive(), "the refusal waited for the running sample"
            assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1, r.text
            assert "OODSYNTH_MAX_HEAVY_REQUESTS" in first_error(r)["msg"]
        assert api.get("/fits").status_code == 200  # cheap routes are not in the pool
        worker.join(timeout=30)
        assert slow[0].status_code == 503  # the spinning one stopped at its budget and freed the slot
        r = api.post("/sample", json={"fit": "toy", "method": "inverse_rejection", "n_per_class": 2})
        assert r.status_code == 200, r.text


def test_an_over_size_json_answer_is_refused_before_sampling(api):
    """JSON answers over the size cap were refused only after 14 s of sampling."""
    assert post_fit(api).status_code == 201
    start = time.monotonic()
    r = api.post("/sample", json={"fit": "toy", "method": "inverse_rejection", "n_per_class": 200, "params": SPIN})
    # the spinning sampler never ran: sampling would have taken the whole time budget
    assert time.monotonic() - start < get_settings().sample_time_budget_s / 2
    assert r.status_code == 422 and first_error(r)["loc"] == ["body", "include_vectors"], r.text


def test_sample_requests_past_the_memory_budget_are_429_while_one_runs(caps, monkeypatch):
    """One /sample at the default caps peaked at 1.2 GB and four at once at 3.0 GB: requests in flight share one
    memory budget, estimated from their size before sampling."""
    from fastapi.testclient import TestClient

    from services.embed_sampler.app import create_app
    from services.embed_sampler.limits import MEMORY

    monkeypatch.setenv("OODSYNTH_HEAVY_MEMORY_BUDGET_BYTES", str(2**20))
    monkeypatch.setenv("OODSYNTH_MAX_HEAVY_REQUESTS", "4")
    monkeypatch.setenv("OODSYNTH_SAMPLE_TIME_BUDGET_S", "3")
    get_settings.cache_clear()
    with TestClient(create_app(), raise_server_exceptions=False) as api:
        assert post_fit(api).status_code == 201
        big = {"fit": "toy", "method": "inverse_rejection", "n_per_class": 10_000, "include_vectors": False}
        slow: list[httpx.Response] = []
        worker = threading.Thread(target=lambda: slow.append(api.post("/sample", json={**big, "params": SPIN})))
        worker.start()
        time.sleep(1.0)  # admitted alone although over the budget: 10,000 x 3 x 16 x 24 bytes
        assert MEMORY.reserved == 10_000 * 3 * 16 * 24
        r = api.post("/sample", json={"fit": "toy", "method": "inverse_rejection", "n_per_class": 2})
        assert r.status_code == 429 and "OODSYNTH_HEAVY_MEMORY_BUDGET_BYTES" in first_error(r)["msg"], r.text
        worker.join(timeout=30)
        assert slow[0].status_code == 503 and MEMORY.reserved == 0  # released when the request ended
        r = api.post("/sample", json={"fit": "toy", "method": "inverse_rejection", "n_per_class": 2})
        assert r.status_code == 200, r.text
