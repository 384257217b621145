"""``oodsynth demo``: the whole system end to end on one machine, offline, in a few minutes on CPU.

It runs the real parts as separate processes, exactly as deployed: a Redis
server (embedded unless ``OODSYNTH_REDIS_URL`` is set), the API (uvicorn) and
one non-forking diffusion worker, and talks to them only over HTTP. The SD
pipeline is the trained decoder of the offline ``animals`` profile (trained on
first use in a few CPU minutes, then cached under ``OODSYNTH_HOME``) and the fit
is made on its encoder's features of the real training images, so the outliers
are real imagined animals. ``DemoConfig(profile=None)`` uses the tiny
random-weight pipeline and a toy bank instead (noise-like images; unit tests).
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .config import get_settings
from .redact import redact_url
from .samplers import DEFAULT_METHOD

if TYPE_CHECKING:
    from .bank import FeatureBank

DEMO_WORDS = ("cat", "dog", "ship", "truck")


@dataclass
class DemoConfig:
    # The trained decoder of this offline profile (real images); None = the tiny random-weight model.
    profile: str | None = "animals"
    words: tuple[str, ...] = DEMO_WORDS  # tiny model only: its class words
    bank_per_class: int = 60  # ID features per class in the toy bank
    bank_spread: float = 0.15  # noise around each class direction (before renormalising)
    density: str = "vmf"
    method: str = DEFAULT_METHOD
    n_per_class: int = 2  # outlier vectors per class
    images_per_vector: int = 1
    size: int | None = None  # decode height = width; None: the model's native size
    steps: int | None = None  # None: the trained decoder's recommendation (4 for the tiny model)
    output_size: int = 64
    dataset: str = "demo"
    seed: int = 0
    timeout_s: float = 600.0
    # The worker re-encodes each image with the decoder's encoder (the bank's), so the gallery and train-ood
    # see verified and rejected outliers; the tiny model has no encoder and its images stay unverified.
    verify: bool = True


@dataclass
class DemoResult:
    dataset: str
    store: Path
    manifest: Path
    images: list[Path] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    api_url: str = ""


def tiny_model_dir(home: Path, words: tuple[str, ...]) -> Path:
    """The cached tiny pipeline for ``words`` (built on first use)."""
    from .offline_decoder.tiny_model import make_tiny_pipeline

    key = hashlib.sha256(",".join(words).encode()).hexdigest()[:10]
    path = home / "models" / f"tiny-sd-{key}"
    if not (path / "model_index.json").is_file():
        _quiet_hf()
        make_tiny_pipeline(path, list(words))
    return path


def _quiet_hf() -> None:
    """The library progress bars of save/load would interleave with the demo's own output."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


@dataclass
class DemoModel:
    """What the demo decodes with and fits on: a pipeline folder, its ID bank and decode settings."""

    model_dir: Path
    bank: FeatureBank
    decode: dict
    description: str
    encoder: Path | None = None  # the checkpoint the bank's features came from: the worker verifies with it


def demo_model(home: Path, config: DemoConfig, echo: Callable[[str], None]) -> DemoModel:
    """The trained decoder of ``config.profile`` with a bank of its encoder's features of the real training
    images; or, with ``profile=None``, the tiny random-weight model with a toy bank around its anchors."""
    if config.profile is None:
        model_dir = tiny_model_dir(home, tuple(config.words))
        size = config.size or 64
        decode = {"steps": config.steps or 4, "height": size, "width": size}
        return DemoModel(model_dir, toy_bank(model_dir, config), decode, "the tiny random-weight SD pipeline")
    from .data import load_dataset
    from .encoding.features import build_bank
    from .offline_decoder.assets import ensure_profile_assets

    assets = ensure_profile_assets(config.profile, home, echo=echo)
    train = load_dataset(config.profile, "train", image_size=assets.image_size)
    bank = build_bank(assets.encoder_checkpoint, train, progress=False)
    decode = assets.decode_settings()
    if config.steps:
        decode["steps"] = config.steps
    if config.size:
        decode["height"] = decode["width"] = config.size
    description = f"the trained {config.profile} decoder"
    return DemoModel(assets.decoder_dir, bank, decode, description, assets.encoder_checkpoint)


def toy_bank(model_dir: Path, config: DemoConfig):
    """ID features drawn around the model's own token rows T(y), so the anchors are real ones."""
    from .bank import FeatureBank
    from .encoding.anchors import extract_anchors

    anchors = extract_anchors(model_dir, list(config.words))
    rng = np.random.default_rng(config.seed)
    directions = anchors / np.linalg.norm(anchors, axis=1, keepdims=True)
    labels = np.repeat(np.arange(len(config.words)), config.bank_per_class)
    feats = directions[labels] + config.bank_spread * rng.normal(size=(labels.size, anchors.shape[1])) / np.sqrt(
        anchors.shape[1]
    )
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return FeatureBank.from_arrays(feats.astype(np.float32), labels, anchors.astype(np.float32), list(config.words))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class _Processes:
    """Child processes (API, worker) with their logs; stopped in reverse order, gently first."""

    def __init__(self, log_dir: Path, env: dict[str, str]):
        self.log_dir = log_dir
        self.env = env
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = self.log_dir / f"{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=self.env)
        self.procs.append((name, proc, log))
        return proc

    def check_alive(self) -> None:
        for name, proc, log in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}; last log lines ({log}):\n{_tail(log)}")

    def stop(self) -> None:
        for _name, proc, _log in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # RQ: warm shutdown; uvicorn: graceful
        for _name, proc, _log in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_healthy(url: str, procs: _Processes, timeout_s: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the API at {url} did not become healthy within {timeout_s:.0f} s")


def _redis(home: Path, settings, echo: Callable[[str], None]):
    """The Redis to use: the configured one, else an embedded server (returned, to be stopped)."""
    from .state.redis_conn import start_embedded_redis

    embedded = None
    redis_url = os.environ.get("OODSYNTH_REDIS_URL") or settings.redis_url
    if not redis_url:
        embedded = start_embedded_redis(home / "demo-redis")
        redis_url = embedded.url
    echo(f"redis:  {redact_url(redis_url)}{' (embedded)' if embedded else ''}")  # never the password
    return redis_url, embedded


def _demo_env(model: DemoModel, config: DemoConfig, redis_url: str, store_root: Path, home: Path) -> dict[str, str]:
    """The API's and the worker's environment: this Redis, model, store and home, offline."""
    env = {
        **os.environ,
        "OODSYNTH_REDIS_URL": redis_url,
        "OODSYNTH_MODEL": str(model.model_dir),
        "OODSYNTH_STORE": str(store_root),
        "OODSYNTH_HOME": str(home),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    if config.verify and model.encoder is not None:
        env["OODSYNTH_ENCODER_CHECKPOINT"] = str(model.encoder)
    return env


def _start_services(procs: _Processes, log_dir: Path, echo: Callable[[str], None]) -> str:
    """Start the API and a worker; the API's URL once it answers."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    cli = [sys.executable, "-c", "from oodsynth.cli import main; main()"]
    procs.start("api", [*cli, "serve", "--host", "127.0.0.1", "--port", str(port)])
    # The worker loads the pipeline while the API fits and samples.
    procs.start("worker", [*cli, "worker", "--log-level", "WARNING"])
    _wait_healthy(api_url, procs)
    echo(f"api:    {api_url}  (docs at {api_url}/docs; logs in {log_dir})")
    return api_url


def _fit_sample_generate(
    api_url: str,
    model: DemoModel,
    config: DemoConfig,
    procs: _Processes,
    echo: Callable[[str], None],
    progress: Callable[[int, int], None] | None,
) -> tuple[list[dict], list[str]]:
    """Through the API as a user would: fit the bank, sample outlier vectors, queue their images and wait for
    them (the children checked alive while waiting); the jobs' states and ids."""
    from .client import OodsynthClient

    bank = model.bank
    with OodsynthClient(api_url) as client:
        fit = client.fit("demo", bank.to_bytes(), config.density, replace=True)
        echo(f"fit:    {fit['kind']} on {fit['n_classes']} classes ({', '.join(bank.class_names)}), dim {fit['dim']}")
        sample = client.sample("demo", config.method, config.n_per_class, seed=config.seed, include_vectors=False)
        pct = sample["diagnostics_summary"].get("id_percentile", {}).get("mean")
        echo(
            f"sample: {sample['n']} outlier vectors by {config.method}"
            + (f", mean ID percentile {pct:.2f}" if pct is not None else "")
        )
        queued = client.generate(
            config.dataset,
            sample_id=sample["sample_id"],
            images_per_vector=config.images_per_vector,
            **model.decode,
            output_size=config.output_size,
            seed=config.seed,
        )
        echo(f"queue:  {queued['n_images']} images in {len(queued['job_ids'])} jobs")

        def watch(done: int, total: int) -> None:
            procs.check_alive()
            if progress is not None:
                progress(done, total)

        states = client.wait(queued["job_ids"], timeout=config.timeout_s, poll_s=0.5, progress=watch)
    return states, queued["job_ids"]


def _collect(config: DemoConfig, store_root: Path, states: list[dict], job_ids: list[str], api_url: str) -> DemoResult:
    """The finished jobs' images, once the store agrees with its manifest."""
    from .store.results import ResultStore

    failed = [s for s in states if s["status"] != "finished"]
    if failed:
        raise RuntimeError(f"{len(failed)} jobs did not finish: {failed[0]['status']}: {failed[0].get('error')}")
    store = ResultStore(store_root)
    images = [store_root / p for s in states for p in s["result"]["images"]]
    report = store.verify(config.dataset)
    if not report.ok:
        raise RuntimeError(f"the result store disagrees with its manifest: {report}")
    manifest = store.manifest_path(config.dataset)
    assert isinstance(manifest, Path)  # a store on a local folder
    return DemoResult(
        dataset=config.dataset,
        store=store_root,
        manifest=manifest,
        images=images,
        job_ids=job_ids,
        api_url=api_url,
    )


def run_demo(
    config: DemoConfig | None = None,
    *,
    echo: Callable[[str], None] = print,
    progress: Callable[[int, int], None] | None = None,
) -> DemoResult:
    """Start Redis, the API and a worker; fit, sample, generate, wait; stop everything; return the outputs."""
    config = config or DemoConfig()
    settings = get_settings()
    home = Path(settings.home).resolve()
    store_root = Path(settings.store).resolve()
    log_dir = home / "demo-logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    redis_url, embedded = _redis(home, settings, echo)
    procs = None
    try:
        what = (
            "the tiny random-weight SD pipeline"
            if config.profile is None
            else f"the trained {config.profile} decoder (trained once, then cached)"
        )
        echo(f"model:  building/loading {what} ...")
        model = demo_model(home, config, echo)
        echo(f"model:  {model.description}: {model.model_dir}")
        procs = _Processes(log_dir, _demo_env(model, config, redis_url, store_root, home))
        api_url = _start_services(procs, log_dir, echo)
        states, job_ids = _fit_sample_generate(api_url, model, config, procs, echo, progress)
        return _collect(config, store_root, states, job_ids, api_url)
    finally:
        if procs is not None:
            procs.stop()
        if embedded is not None:
            embedded.stop()
