import numpy as np
import pytest

from oodsynth.bank import BankError, FeatureBank, load_bank


def _arrays(n=20, c=2, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        features=rng.normal(size=(n, d)).astype(np.float32),
        labels=np.arange(n) % c,
        anchors=rng.normal(size=(c, d)).astype(np.float32),
        class_names=[f"c{i}" for i in range(c)],
    )


def test_roundtrip(tmp_path):
    bank = FeatureBank.from_arrays(**_arrays())
    bank.save(tmp_path / "b.npz")
    again = load_bank(tmp_path / "b.npz")
    np.testing.assert_array_equal(again.features, bank.features)
    assert again.labels.dtype == np.int64 and list(again.class_names) == ["c0", "c1"]
    assert load_bank(bank.to_bytes()).dim == 8


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda a: a.update(features=a["features"][:, :4]), "anchors"),
        (lambda a: a["features"].__setitem__((0, 0), np.nan), "features"),
        (lambda a: a.update(labels=np.full(20, 5)), "labels"),
        (lambda a: a.update(labels=np.arange(20) % 2 * 1.0), "labels"),
        (lambda a: a.update(labels=np.r_[np.zeros(19, int), 1]), "labels"),  # class 1 has one point
        (lambda a: a.update(class_names=["only"]), "class_names"),
        (lambda a: a.update(features=a["features"].astype(np.int32)), "features"),
    ],
)
def test_bad_banks_name_the_field(change, field):
    arrays = _arrays()
    change(arrays)
    with pytest.raises(BankError) as err:
        FeatureBank.from_arrays(**arrays)
    assert err.value.field == field


def test_not_an_npz():
    with pytest.raises(BankError, match="file"):
        load_bank(b"definitely not numpy")
    with pytest.raises(BankError, match="anchors: missing"):
        import io

        buf = io.BytesIO()
        np.savez(buf, features=np.zeros((2, 2), np.float32), labels=np.zeros(2, int), class_names=np.array(["a"]))
        load_bank(buf.getvalue())


def test_embedded_redis_joins_a_live_server_instead_of_starting_a_second(tmp_path, monkeypatch):
    import redis

    from oodsynth.state import redis_conn

    first = redis_conn.start_embedded_redis(tmp_path / "home" / "redis")
    try:
        with pytest.raises(redis_conn.EmbeddedRedisBusy):
            redis_conn.start_embedded_redis(tmp_path / "home" / "redis")
        monkeypatch.setattr(redis_conn, "_embedded", None)
        url = redis_conn.redis_url()  # OODSYNTH_HOME points at tmp_path/home (conftest)
        assert url == first.url
        redis.Redis.from_url(url).set("k", "v")
        assert redis.Redis.from_url(first.url).get("k") == b"v"
    finally:
        first.stop()


def test_unreadable_checkpoint_names_the_field(tmp_path):
    from oodsynth.checkpoints import read_checkpoint

    garbage = tmp_path / "encoder.pt"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="^checkpoint: .* not a readable checkpoint"):
        read_checkpoint(tmp_path, kind="text_aligned_encoder", default_name="encoder.pt", what="an encoder")
