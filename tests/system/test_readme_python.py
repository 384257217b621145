"""The README's ``python`` block: every name it uses exists with that signature, and it runs as written against
a live ``oodsynth serve`` and ``oodsynth worker`` (real Redis, the tiny random-weight SD), its export loading with
``datasets`` with a ``label`` ClassLabel."""

from __future__ import annotations

import ast
import inspect
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

import oodsynth
from oodsynth.bank import FeatureBank
from tests.helpers.servers import wait_healthy
from tests.system.test_readme import README_API, readme_text

CLI = [sys.executable, "-c", "from oodsynth.cli import main; main()"]
GENERATE = 'sample_id=sample["sample_id"])'
# The one change to the block besides its address: the tiny model decodes small and fast (the defaults, 50 steps at
# 512 x 512, take minutes of CPU per image on a shared machine).
SMALL = 'sample_id=sample["sample_id"], steps=2, height=64, width=64, output_size=32)'


def python_block() -> str:
    (block,) = re.findall(r"```python\n(.*?)```", readme_text(), flags=re.S)
    return block


def test_the_python_block_uses_real_names_and_signatures():
    """Each ``oodsynth.X`` exists, and each call binds to the signature of what it calls (before any server)."""
    tree = ast.parse(python_block())
    owners = {"oodsynth": oodsynth, "client": oodsynth.OodsynthClient}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    called = set()
    for call in calls:
        owner = call.func.value.id if isinstance(call.func.value, ast.Name) else None
        assert owner in owners, ast.unparse(call)
        target = getattr(owners[owner], call.func.attr)
        args = [None] * len(call.args) + ([None] if owner == "client" else [])  # self
        inspect.signature(target).bind(*args, **{k.arg: None for k in call.keywords if k.arg})
        called.add(f"{owner}.{call.func.attr}")
    assert called == {
        "oodsynth.OodsynthClient",
        "client.fit",
        "client.sample",
        "client.generate",
        "client.wait",
        "oodsynth.export_dataset",
    }
    assert len(python_block().splitlines()) <= 10 and python_block().count(GENERATE) == 1


def tiny_model_bank(model_dir, words, n_per_class: int = 20) -> FeatureBank:
    """ID features around the tiny model's own token rows, which serve as the anchors."""
    from oodsynth.encoding.anchors import extract_anchors

    anchors = extract_anchors(model_dir, words)
    directions = anchors / np.linalg.norm(anchors, axis=1, keepdims=True)
    labels = np.repeat(np.arange(len(words)), n_per_class)
    feats = directions[labels] + 0.005 * np.random.default_rng(0).normal(size=(labels.size, anchors.shape[1]))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return FeatureBank.from_arrays(feats.astype(np.float32), labels, anchors, list(words))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # an `oodsynth serve` and an `oodsynth worker` process, 12 small images decoded
def test_the_python_block_runs_as_written(redis_url, tiny_sd, tmp_path):
    import datasets

    from tests.conftest import TINY_SD_WORDS

    env = {
        **os.environ,
        "OODSYNTH_REDIS_URL": redis_url,
        "OODSYNTH_HOME": str(tmp_path / "home"),
        "OODSYNTH_MODEL": str(tiny_sd),
        "OODSYNTH_STORE": str(tmp_path / "store"),
        "OODSYNTH_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("OODSYNTH_API_KEYS", None)
    env.pop("OODSYNTH_API_KEY", None)
    (tmp_path / "bank.npz").write_bytes(tiny_model_bank(tiny_sd, TINY_SD_WORDS).to_bytes())
    base = f"http://127.0.0.1:{free_port()}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env, "cwd": tmp_path}
    api = subprocess.Popen([*CLI, "serve", "--port", base.rsplit(":", 1)[1]], **quiet)
    worker = subprocess.Popen([*CLI, "worker", "--no-scheduler"], **quiet)
    try:
        wait_healthy(base, api, "oodsynth serve")
        run = subprocess.run(
            [sys.executable, "-c", python_block().replace(README_API, base).replace(GENERATE, SMALL)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr[-3000:]
    finally:
        for proc in (worker, api):
            proc.terminate()
            proc.wait(timeout=60)
    rows = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "mybank-hf"), cache_dir=str(tmp_path / "hf"))[
        "train"
    ]
    assert len(rows) == 4 * len(TINY_SD_WORDS)  # 4 vectors per class, one image each
    assert rows.features["label"] == datasets.ClassLabel(names=TINY_SD_WORDS)
    assert set(rows["sampler"]) == {oodsynth.DEFAULT_METHOD} and {im.size for im in rows["image"]} == {(32, 32)}
    assert str(tmp_path) not in (tmp_path / "mybank-hf" / "README.md").read_text()
