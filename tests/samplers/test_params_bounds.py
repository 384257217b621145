"""Every sampler at the bounds of its ``Params`` and at random in-bound values: finite vectors or a typed refusal.

Driven by hypothesis through the library's one sampling use case (``draw_sample``, what ``POST /sample``
runs), on a real Redis with a small fit: the outcome must be a sample whose vectors and log-densities are
finite, an ``InputError`` (the API's 422 naming the field) or the typed time-budget ``Unavailable`` (503,
within the budget); anything else would be the API's 500. Bounds are read from each ``Params`` model, so a
new field or a changed bound is covered without editing this file.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import pytest
import redis
from annotated_types import Ge, Gt, Le, Lt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oodsynth.config import get_settings
from oodsynth.errors import InputError, Unavailable
from oodsynth.samplers import SAMPLERS
from oodsynth.service import create_fit, draw_sample
from oodsynth.state.fits import FitCache, FitRegistry
from oodsynth.state.samples import SampleRegistry
from tests.helpers.toy_banks import toy_bank

BUDGET_S = 3.0
FLOAT_MAX = sys.float_info.max


def _bounds(field) -> tuple[float | None, bool, float | None, bool]:
    """(low, low inclusive, high, high inclusive) of a pydantic field's numeric constraints."""
    low = high = None
    low_in = high_in = True
    for m in field.metadata:
        if isinstance(m, Ge):
            low, low_in = m.ge, True
        elif isinstance(m, Gt):
            low, low_in = m.gt, False
        elif isinstance(m, Le):
            high, high_in = m.le, True
        elif isinstance(m, Lt):
            high, high_in = m.lt, False
    return low, low_in, high, high_in


def _extremes(field) -> list:
    """The values at a numeric field's bounds (the smallest float above an open bound), or [] otherwise."""
    ann = field.annotation
    if ann not in (int, float, float | None):
        return []
    low, low_in, high, high_in = _bounds(field)
    values = []
    if ann is int:
        lo = -(2**31) if low is None else math.ceil(low) + (0 if low_in else 1)
        hi = 2**31 if high is None else math.floor(high) - (0 if high_in else 1)
        return [lo, hi]
    lo = -FLOAT_MAX if low is None else low if low_in else math.nextafter(low, math.inf)
    hi = FLOAT_MAX if high is None else high if high_in else math.nextafter(high, -math.inf)
    values += [lo, hi, math.nextafter(lo, math.inf), math.nextafter(hi, -math.inf)]
    return values


def _strategy(field):
    ann = field.annotation
    low, low_in, high, high_in = _bounds(field)
    if ann is int:
        lo = -(2**31) if low is None else math.ceil(low) + (0 if low_in else 1)
        hi = 2**31 if high is None else math.floor(high) - (0 if high_in else 1)
        return st.integers(lo, hi)
    if ann in (float, float | None):
        return st.floats(
            -FLOAT_MAX if low is None else low,
            FLOAT_MAX if high is None else high,
            exclude_min=low is not None and not low_in,
            exclude_max=high is not None and not high_in,
            allow_nan=False,
            allow_infinity=False,
        )
    return None


NUMERIC = {
    (name, key): field
    for name, cls in SAMPLERS.items()
    for key, field in cls.Params.model_fields.items()
    if _strategy(field) is not None
}
EXTREME_CASES = [(name, key, value) for (name, key), field in NUMERIC.items() for value in _extremes(field)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A real Redis with one small fit (3 classes, 16-d), the sampling budget set, for the whole module."""
    from oodsynth.state.redis_conn import start_embedded_redis

    server = start_embedded_redis(tmp_path_factory.mktemp("redis-bounds"))
    client = redis.Redis.from_url(server.url)
    fits = FitRegistry(client, cache=FitCache())
    create_fit(fits, "toy", toy_bank(n_per_class=30), "vmf")
    settings_ = get_settings().model_copy(update={"sample_time_budget_s": BUDGET_S})
    yield fits, SampleRegistry(client, ttl_s=60, budget_bytes=2**24), settings_
    server.stop()


def run(world, method: str, params: dict) -> str:
    """Draw 2 vectors per class; 'ok' (finite), '422' or '503' (the time budget), or the test fails."""
    fits, samples, settings_ = world
    start = time.monotonic()
    try:
        stored = draw_sample(fits, samples, settings_, fit="toy", method=method, n_per_class=2, seed=0, params=params)
    except InputError:
        return "422"
    except Unavailable as exc:
        assert exc.field == "sample_time_budget_s", exc
        assert time.monotonic() - start < BUDGET_S + 5, "the budget answer came late"
        return "503"
    assert np.isfinite(stored.vectors).all(), f"{method} {params}: non-finite vectors"
    assert np.isfinite(stored.diagnostics["cos_to_mean"]).all()
    return "ok"


@pytest.mark.slow
@pytest.mark.parametrize("method, key, value", EXTREME_CASES, ids=[f"{m}-{k}-{v!r}" for m, k, v in EXTREME_CASES])
def test_every_sampler_at_each_bound_of_its_params(world, method, key, value):
    """One parameter at a bound, the rest at defaults (sphere_hmc's boundary_width 5e-324 once divided by zero)."""
    run(world, method, {key: value})


@pytest.mark.slow
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_sampler_at_random_in_bound_params(world, data):
    method = data.draw(st.sampled_from(sorted(SAMPLERS)))
    fields = {k: f for (m, k), f in NUMERIC.items() if m == method}
    keys = data.draw(st.lists(st.sampled_from(sorted(fields)), unique=True, max_size=3)) if fields else []
    params = {k: data.draw(_strategy(fields[k]), label=k) for k in keys}
    run(world, method, params)
