"""docker-compose.yml without Docker (it cannot run here): what can be checked statically is.

The file parses; each service's OODSYNTH_* variables are settings the code
reads and their values validate; Dockerfiles exist and copy paths that exist;
commands name real modules and CLI commands; Redis persists (AOF) and is
health-checked; the worker reserves a GPU and keeps the HF cache in a volume.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from oodsynth.config import Settings

REPO = Path(__file__).resolve().parents[1]
KNOWN_FOREIGN_ENV = {"HF_HOME", "RQ_DASHBOARD_REDIS_URL"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _expand(value: str) -> str:
    """Compose's ${VAR:-default} with VAR unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_services_and_env_match_settings(compose, monkeypatch):
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker", "dashboard"}
    setting_vars = {f"OODSYNTH_{name.upper()}" for name in Settings.model_fields}
    for name, service in services.items():
        env = _env(service)
        unknown = {k for k in env if not k.startswith("OODSYNTH_")} - KNOWN_FOREIGN_ENV
        assert not unknown, f"{name}: variables no code reads: {unknown}"
        ours = {k: _expand(v) for k, v in env.items() if k.startswith("OODSYNTH_")}
        assert set(ours) <= setting_vars, f"{name}: not settings: {set(ours) - setting_vars}"
        for key in setting_vars:
            monkeypatch.delenv(key, raising=False)
        for key, value in ours.items():
            monkeypatch.setenv(key, value)
        settings = Settings(_env_file=None)  # the values validate (ints are ints, paths are paths)
        if ours:
            assert settings.redis_url == "redis://redis:6379/0"
            assert settings.store == Path("/data/store")
    # API and worker agree on everything that both read.
    api, worker = _env(services["api"]), _env(services["worker"])
    for key in ("OODSYNTH_REDIS_URL", "OODSYNTH_QUEUE_NAME", "OODSYNTH_STORE", "OODSYNTH_MODEL"):
        assert api[key] == worker[key]
    assert _env(services["dashboard"])["RQ_DASHBOARD_REDIS_URL"] == api["OODSYNTH_REDIS_URL"]


def test_redis_persists_and_is_health_checked(compose):
    redis = compose["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    for name in ("api", "worker", "dashboard"):
        assert compose["services"][name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_worker_reserves_a_gpu_and_caches_models(compose):
    worker = compose["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert "gpu" in device["capabilities"] and device["driver"] == "nvidia"
    hf_home = _env(worker)["HF_HOME"]
    volumes = {v.split(":")[1]: v.split(":")[0] for v in worker["volumes"]}
    assert volumes[hf_home] in compose["volumes"]  # a named volume: downloads survive rebuilds
    # The API and the worker see the same result store.
    assert "store:/data/store" in worker["volumes"] and "store:/data/store" in compose["services"]["api"]["volumes"]


def test_dockerfiles_exist_and_copy_real_paths(compose):
    for name in ("api", "worker"):
        build = compose["services"][name]["build"]
        dockerfile = REPO / build["context"] / build["dockerfile"]
        assert dockerfile.is_file(), dockerfile
        text = dockerfile.read_text()
        for line in text.splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert (REPO / build["context"] / source).exists(), f"{dockerfile}: COPY {source}"
        assert "pip install" in text and ".[" in text


def test_commands_reference_real_modules(compose):
    api_cmd = compose["services"]["api"]["command"]
    assert api_cmd[0] == "uvicorn"
    module, attr = api_cmd[1].split(":")
    assert hasattr(importlib.import_module(module), attr)

    worker = compose["services"]["worker"]
    assert worker["entrypoint"] == ["oodsynth", "worker"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["oodsynth"] == "oodsynth.cli:main"
    import typer.main

    from oodsynth.cli import app

    group = typer.main.get_command(app)
    worker_cmd = group.commands["worker"]
    options = {opt for param in worker_cmd.params for opt in param.opts}
    for token in worker["command"]:
        if token.startswith("--"):
            assert token in options, f"'oodsynth worker' has no option {token}"
    # The worker image's own entrypoint is a real module too.
    worker_dockerfile = (REPO / "services/diffusion_worker/Dockerfile").read_text()
    for found in re.findall(r'"-m", "([\w.]+)"', worker_dockerfile):
        assert importlib.util.find_spec(found) is not None, found
