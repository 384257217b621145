"""End to end over a real Redis and a real worker PROCESS: fit -> sample -> generate -> images.

The worker is ``oodsynth worker --burst`` in a subprocess (non-forking RQ
worker, tiny random-weight SD); the API runs in-process via TestClient.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from oodsynth.bank import FeatureBank
from oodsynth.config import get_settings
from oodsynth.encoding.anchors import extract_anchors
from oodsynth.queue.enqueue import wait_for_jobs
from oodsynth.store.results import ResultStore
from services.embed_sampler.app import create_app

pytestmark = pytest.mark.slow  # a worker process

WORDS = ["cat", "ship", "horse"]
WORKER = [sys.executable, "-c", "from oodsynth.cli import main; main()", "worker", "--burst", "--no-scheduler"]


def toy_bank(model_dir: Path, n_per_class: int = 25) -> FeatureBank:
    """ID features around the tiny model's own token rows, which serve as the anchors."""
    anchors = extract_anchors(model_dir, WORDS)
    rng = np.random.default_rng(0)
    directions = anchors / np.linalg.norm(anchors, axis=1, keepdims=True)
    labels = np.repeat(np.arange(len(WORDS)), n_per_class)
    feats = directions[labels] + 0.005 * rng.normal(size=(labels.size, anchors.shape[1]))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return FeatureBank.from_arrays(feats.astype(np.float32), labels, anchors, WORDS)


def test_fit_sample_generate_worker_store(redis_url, tiny_sd, settings_env, tmp_path):
    store_root = settings_env(MODEL=tiny_sd, IMAGES_PER_JOB=4, GPU_BATCH_SIZE=2, DEVICE="cpu").store

    with TestClient(create_app()) as api:
        r = api.post(
            "/fits",
            data={"name": "e2e", "density": "vmf"},
            files={"file": ("bank.npz", toy_bank(tiny_sd).to_bytes(), "application/octet-stream")},
        )
        assert r.status_code == 201, r.text
        r = api.post("/sample", json={"fit": "e2e", "method": "inverse_rejection", "n_per_class": 2, "seed": 0})
        assert r.status_code == 200, r.text
        sample = r.json()
        r = api.post(
            "/generate",
            json={
                "sample_id": sample["sample_id"],
                "dataset": "e2e",
                "steps": 2,
                "height": 64,
                "width": 64,
                "output_size": 32,
                "seed": 1,
            },
        )
        assert r.status_code == 202, r.text
        queued = r.json()
        assert queued["n_images"] == 6 and len(queued["job_ids"]) == 2

        worker = subprocess.run(WORKER, capture_output=True, text=True, timeout=240)
        assert worker.returncode == 0, worker.stderr[-3000:]

        states = wait_for_jobs(queued["job_ids"], timeout=10)
        assert [s["status"] for s in states] == ["finished", "finished"], states
        assert all(s["progress"]["done"] == s["progress"]["total"] > 0 for s in states)
        assert sum(s["progress"]["total"] for s in states) == 6
        over_http = api.get(f"/jobs/{queued['job_ids'][0]}").json()
        assert over_http["status"] == "finished" and len(over_http["result"]["images"]) == 4
        stats = api.get("/queue").json()
        (mine,) = [q for q in stats["queues"] if q["name"] == get_settings().queue_name]
        assert mine["finished"] == 2 and mine["queued"] == mine["started"] == mine["failed"] == 0

    store = ResultStore(store_root)
    records = store.records("e2e")
    paths = [p for s in states for p in s["result"]["images"]]
    # Images and manifest rows match one to one, and both match the job results.
    assert sorted(r.path for r in records) == sorted(paths) and len(set(paths)) == 6
    report = store.verify("e2e")
    assert report.ok and report.n_images == report.n_records == 6, report
    vector_ids = {f"{sample['sample_id']}:{i}" for i in range(6)}
    assert {r.vector_id for r in records} == vector_ids
    assert {r.class_name for r in records} == set(WORDS)
    for rec in records:
        assert rec.sampler == "inverse_rejection" and rec.model == str(tiny_sd) and rec.dataset == "e2e"
        assert rec.path.startswith(f"e2e/{rec.class_name}/") and rec.job_id in queued["job_ids"]
        assert np.isfinite(rec.diagnostics["log_density"]) and 0 <= rec.diagnostics["id_percentile"] <= 100
        with Image.open(Path(store_root) / rec.path) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
