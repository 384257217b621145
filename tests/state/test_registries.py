"""Fits and samples in a real Redis: round trips, per-process cache, refits seen by other replicas."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from oodsynth.densities import ClassDensities
from oodsynth.errors import Conflict, InputError, NotFound
from oodsynth.samplers import SampleResult
from oodsynth.service.sampling import resolve_classes
from oodsynth.state import blobs
from oodsynth.state.fits import FitCache, FitRegistry
from oodsynth.state.samples import SampleRegistry, StoredSample
from tests.helpers.toy_banks import toy_bank

make_bank = toy_bank


@pytest.fixture
def client(redis_url) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def test_fit_round_trip_list_and_summary(client):
    bank = make_bank()
    fit = ClassDensities(kind="vmf").fit(bank)
    fits = FitRegistry(client)
    summary = fits.put("toy", fit, bank)

    assert fits.list() == ["toy"]
    stored = fits.summary("toy")
    assert stored == summary
    assert stored["kind"] == "vmf" and stored["n_classes"] == 3 and stored["dim"] == 16
    assert stored["n_bank"] == 120
    assert [c["name"] for c in stored["classes"]] == ["class_a", "class_b", "class_c"]
    assert all(c["kappa"] > 0 for c in stored["classes"])

    # A replica with an empty cache decodes the same arrays from Redis.
    replica = FitRegistry(client, cache=FitCache())
    got_fit, got_bank = replica.get("toy")
    np.testing.assert_allclose(got_fit.means_, fit.means_, rtol=1e-6)
    np.testing.assert_array_equal(got_bank.features, bank.features)
    np.testing.assert_array_equal(got_bank.labels, bank.labels)
    assert got_fit.class_names_ == ["class_a", "class_b", "class_c"]
    # Second get is served from the cache (same objects, no re-parse).
    again_fit, again_bank = replica.get("toy")
    assert again_fit is got_fit and again_bank is got_bank


def test_refit_under_same_name_is_seen_by_other_replicas(client):
    bank = make_bank()
    writer = FitRegistry(client, cache=FitCache())
    reader = FitRegistry(client, cache=FitCache())
    writer.put("shared", ClassDensities(kind="vmf").fit(bank), bank)
    first_version = reader.version("shared")
    assert reader.get("shared")[0].kind == "vmf"

    writer.put("shared", ClassDensities(kind="gaussian_diagonal").fit(bank), bank)
    assert reader.version("shared") != first_version
    assert reader.get("shared")[0].kind == "gaussian_diagonal"


def test_put_refuses_existing_name_without_replace_and_validates_names(client):
    bank = make_bank()
    fit = ClassDensities(kind="vmf").fit(bank)
    fits = FitRegistry(client)
    fits.put("once", fit, bank)
    with pytest.raises(Conflict) as exc:
        fits.put("once", fit, bank, replace=False)
    assert exc.value.field == "name" and exc.value.status == 409
    for bad in ["", "a/b", "x" * 129, "../up", ".", "..", "a\nb", "rtl\u202eevil"]:  # names.validate_name
        with pytest.raises(InputError) as exc:
            fits.put(bad, fit, bank)
        assert exc.value.field == "name"
    for missing in ["nope", "a/b", ""]:
        with pytest.raises(NotFound) as exc:
            fits.get(missing)
        assert exc.value.field == "fit" and exc.value.message == f"no fit named {missing!r}"
        with pytest.raises(NotFound) as exc:
            fits.summary(missing, field="name")
        assert exc.value.field == "name"
    assert fits.delete("once") is True
    assert fits.delete("once") is False
    assert fits.list() == []


def test_large_blobs_are_split_across_hash_fields(client, monkeypatch):
    monkeypatch.setattr(blobs, "CHUNK_BYTES", 1000)
    bank = make_bank(n_per_class=30, dim=24)
    fits = FitRegistry(client, cache=FitCache())
    fits.put("chunked", ClassDensities(kind="gaussian_isotropic").fit(bank), bank)
    assert int(client.hget("oodsynth:fit:chunked", "bank:n")) > 5
    other = FitRegistry(client, cache=FitCache())
    np.testing.assert_array_equal(other.get("chunked")[1].features, bank.features)


def test_sample_round_trip_with_ttl_and_nan_diagnostics(client, monkeypatch):
    monkeypatch.setenv("OODSYNTH_SAMPLE_TTL_S", "600")
    from oodsynth.config import get_settings

    get_settings.cache_clear()
    rng = np.random.default_rng(1)
    m, d = 7, 5
    result = SampleResult(
        vectors=rng.normal(size=(m, d)).astype(np.float32),
        class_index=np.array([0, 0, 0, 2, 2, 2, 2], dtype=np.int64),
        diagnostics={
            "log_density": rng.normal(size=m),
            "id_percentile": rng.uniform(0, 5, size=m),
            "knn_distance": np.full(m, np.nan),
            "cos_to_mean": rng.uniform(0.5, 1, size=m),
        },
        method="inverse_sgld",
        params={"eta": np.float64(0.5), "band": (1.0, 5.0)},
        seed=42,
    )
    samples = SampleRegistry(client)
    sample_id = samples.put_stored(StoredSample.from_result(result, "toy", ["a", "b", "c"]))
    ttl = client.ttl(f"oodsynth:sample:{sample_id}")
    assert 0 < ttl <= 600

    got = samples.get(sample_id)
    assert isinstance(got, StoredSample)
    assert (got.sample_id, got.fit_name, got.method, got.seed) == (sample_id, "toy", "inverse_sgld", 42)
    assert got.params == {"eta": 0.5, "band": [1.0, 5.0]}
    assert got.class_names == ["a", "b", "c"]
    np.testing.assert_array_equal(got.vectors, result.vectors)
    np.testing.assert_array_equal(got.class_index, result.class_index)
    assert np.isnan(got.diagnostics["knn_distance"]).all()
    np.testing.assert_allclose(got.diagnostics["log_density"], result.diagnostics["log_density"])
    assert samples.exists(sample_id)
    for unknown in ["0" * 32, "not-an-id", ""]:
        with pytest.raises(NotFound) as exc:
            samples.get(unknown)
        assert exc.value.field == "sample_id" and "unknown or expired" in exc.value.message


def test_sample_arrays_are_raw_hash_fields_split_into_chunks_and_an_npz_sample_is_read(client, monkeypatch):
    monkeypatch.setattr(blobs, "CHUNK_BYTES", 1000)
    rng = np.random.default_rng(2)
    m, d = 9, 40
    sample = StoredSample(
        sample_id="ab" * 16,
        fit_name="toy",
        method="inverse_sgld",
        params={"band": [1.0, 5.0]},
        seed=3,
        vectors=rng.normal(size=(m, d)).astype(np.float32),
        class_index=rng.integers(0, 3, size=m),
        class_names=["a", "b", "c"],
        diagnostics={"log_density": rng.normal(size=m), "knn_distance": np.full(m, np.nan)},
    )
    samples = SampleRegistry(client, ttl_s=60, budget_bytes=2**20)
    samples.put_stored(sample)
    key = SampleRegistry.key(sample.sample_id)
    assert int(client.hget(key, "vectors:n")) == 2  # 9 x 40 float32 = 1440 bytes in chunks of 1000
    assert client.hget(key, "vectors:0") == sample.vectors[:, :].tobytes()[:1000]
    assert int(client.hget("oodsynth:samples:bytes", sample.sample_id)) == sum(
        len(v) for v in client.hgetall(key).values()
    )

    def same(got: StoredSample) -> None:
        assert (got.sample_id, got.fit_name, got.method, got.params, got.seed) == (
            sample.sample_id,
            "toy",
            "inverse_sgld",
            {"band": [1.0, 5.0]},
            3,
        )
        assert got.class_names == ["a", "b", "c"] and got.vectors.dtype == np.float32
        np.testing.assert_array_equal(got.vectors, sample.vectors)
        np.testing.assert_array_equal(got.class_index, sample.class_index)
        assert list(got.diagnostics) == ["log_density", "knn_distance"]
        np.testing.assert_array_equal(got.diagnostics["log_density"], sample.diagnostics["log_density"])
        assert np.isnan(got.diagnostics["knn_distance"]).all()

    same(samples.get(sample.sample_id))
    client.hdel(key, "vectors:1")  # a torn or truncated part is no sample
    with pytest.raises(NotFound):
        samples.get(sample.sample_id)

    client.delete(key)  # the same sample kept as one .npz
    client.hset(key, mapping=blobs.chunk_fields("npz", sample.to_bytes()))
    same(samples.get(sample.sample_id))


def test_a_cache_drops_the_least_recently_used_fit_and_stale_versions(client):
    bank = make_bank()
    cache = FitCache(size=2)
    fits = FitRegistry(client, cache=cache)
    for name in ("a", "b", "c"):
        fits.put(name, ClassDensities(kind="vmf").fit(bank), bank)
    server = fits._server
    assert cache.get((server, "a"), fits.version("a")) is None  # evicted: the oldest of three
    assert cache.get((server, "c"), fits.version("c")) is not None
    assert cache.get((server, "c"), "another-version") is None  # a refit elsewhere invalidates it
    fits.delete("c")
    assert cache.get((server, "c"), "any") is None


def test_resolve_classes_names_indices_and_errors():
    names = ["cat", "dog", "7"]
    assert resolve_classes(names, None) is None
    assert resolve_classes(names, ["dog", 0, "dog", 1]) == [1, 0]
    assert resolve_classes(names, ["7"]) == [2]
    cases = {
        "classes": [],
        "classes[1]": ["cat", "cow"],
        "classes[0]": [3],
    }
    for field, requested in cases.items():
        with pytest.raises(InputError) as exc:
            resolve_classes(names, requested)
        assert exc.value.field == field
    with pytest.raises(InputError, match="out of range"):
        resolve_classes(names, [-1])
