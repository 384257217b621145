"""docker-compose.yml without Docker (it cannot run here): what can be checked statically is.

The file parses; each service's OODSYNTH_* variables are settings the code
reads and their values validate; Dockerfiles exist and copy paths that exist;
commands name real modules and CLI commands; Redis persists (AOF, fsync every
second), has a memory cap that never evicts queue keys, needs a password and
is not published; results go to a MinIO bucket created at start-up; the API
needs keys; the dashboard is pinned (to the project's rq), JSON-only,
password-protected and opt-in; the worker reserves a GPU and keeps the HF
cache in a volume. `docker compose up` itself is never run.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import re
import tomllib
from urllib.parse import urlsplit

import pytest
import yaml

from oodsynth.config import Settings
from tests.helpers.paths import REPO

S3_ENV = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
# Variables of other programs, per service: anything else must be an oodsynth setting.
FOREIGN_ENV = {
    "redis": {"REDISCLI_AUTH"},
    "minio": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
    "create-bucket": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY"},
    "api": S3_ENV,
    "worker": S3_ENV | {"HF_HOME"},
    "dashboard": {"RQ_DASHBOARD_REDIS_URL", "RQ_DASHBOARD_USERNAME", "RQ_DASHBOARD_PASSWORD"},
}
SECRETS = {"REDIS_PASSWORD", "MINIO_ROOT_PASSWORD", "S3_SECRET_KEY"}  # compose refuses to start without these


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _expand(value: str) -> str:
    """Compose's interpolation with nothing set: ${VAR:-default} -> default, ${VAR:?err} -> a stand-in."""
    value = re.sub(r"\$\{([A-Z_]+):\?[^}]*\}", lambda m: f"<{m[1]}>", value)
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def _published(service: dict) -> list[str]:
    return [str(p) for p in service.get("ports") or []]


def test_services_and_env_match_settings(compose, monkeypatch):
    services = compose["services"]
    assert set(services) == {"redis", "minio", "create-bucket", "api", "worker", "dashboard"}
    setting_vars = {f"OODSYNTH_{name.upper()}" for name in Settings.model_fields}
    for name, service in services.items():
        env = _env(service)
        unknown = {k for k in env if not k.startswith("OODSYNTH_")} - FOREIGN_ENV[name]
        assert not unknown, f"{name}: variables no code reads: {unknown}"
        ours = {k: _expand(v) for k, v in env.items() if k.startswith("OODSYNTH_")}
        assert set(ours) <= setting_vars, f"{name}: not settings: {set(ours) - setting_vars}"
        for key in setting_vars:
            monkeypatch.delenv(key, raising=False)
        for key, value in ours.items():
            monkeypatch.setenv(key, value)
        settings = Settings(_env_file=None)  # the values validate (ints are ints, paths are paths)
        if ours:
            assert settings.redis_url == "redis://:<REDIS_PASSWORD>@redis:6379/0"
            assert settings.store == "s3://oodsynth/store"
    # API and worker agree on everything that both read.
    api, worker = _env(services["api"]), _env(services["worker"])
    for key in ("OODSYNTH_REDIS_URL", "OODSYNTH_QUEUE_NAME", "OODSYNTH_STORE", "OODSYNTH_MODEL", *S3_ENV):
        assert api[key] == worker[key]
    assert _env(services["dashboard"])["RQ_DASHBOARD_REDIS_URL"] == api["OODSYNTH_REDIS_URL"]


def test_redis_needs_a_password_persists_and_is_not_published(compose):
    redis = compose["services"]["redis"]
    command = redis["command"]
    options = dict(zip(command[1::2], command[2::2]))
    # AOF flushed once a second, like the embedded server (docs/operations.md says what that can lose).
    assert options["--appendonly"] == "yes" and options["--appendfsync"] == "everysec"
    # A memory cap whose policy evicts only keys with a TTL (samples, job results): queues, queued
    # jobs and fits have none, so they are never evicted.
    assert options["--maxmemory"] and options["--maxmemory-policy"] == "volatile-lru"
    password = command[command.index("--requirepass") + 1]
    assert password == "${REDIS_PASSWORD:?set REDIS_PASSWORD}"  # a required variable, no default
    assert urlsplit(_expand(_env(compose["services"]["worker"])["OODSYNTH_REDIS_URL"])).password == "<REDIS_PASSWORD>"
    assert _env(redis)["REDISCLI_AUTH"] == password  # the health check authenticates too
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert not _published(redis) and "network_mode" not in redis
    for name in ("api", "worker", "dashboard"):
        assert compose["services"][name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_secrets_have_no_defaults(compose):
    text = (REPO / "docker-compose.yml").read_text()
    for secret in SECRETS:
        uses = re.findall(r"\$\{" + secret + r"(:[?-][^}]*)?\}", text)
        assert uses and all(u.startswith(":?") for u in uses), f"{secret}: every use must be ${{{secret}:?...}}"


def test_results_go_to_a_minio_bucket_created_at_start_up(compose):
    services = compose["services"]
    minio, init = services["minio"], services["create-bucket"]
    assert re.fullmatch(r"quay\.io/minio/minio:RELEASE\.[0-9TZ-]+", minio["image"])  # pinned release
    assert re.fullmatch(r"quay\.io/minio/mc:RELEASE\.[0-9TZ-]+", init["image"])
    assert not _published(minio) and "minio-data:/data" in minio["volumes"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    script = init["command"][0]
    bucket = urlsplit(_env(services["worker"])["OODSYNTH_STORE"]).netloc
    assert f"mc mb --ignore-existing store/{bucket}" in script and script.startswith("set -e")
    # The services get their own key pair (read/write objects), not MinIO's root account.
    assert "mc admin user add store" in script and "readwrite" in script
    for name in ("api", "worker"):
        env = _env(services[name])
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert env["AWS_ACCESS_KEY_ID"] == _env(init)["S3_ACCESS_KEY"]
        assert env["AWS_SECRET_ACCESS_KEY"] == _env(init)["S3_SECRET_KEY"]
        assert services[name]["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
        assert not any(v.endswith(":/data/store") for v in services[name].get("volumes") or [])


def test_only_the_api_is_published_and_only_on_localhost(compose):
    services = compose["services"]
    assert _published(services["api"]) == ["127.0.0.1:8000:8000"]
    assert not _published(services["worker"]) and not _published(services["create-bucket"])


def test_the_api_requires_keys(compose):
    """The API listens on every interface of its container, so compose refuses to start it without keys."""
    api = compose["services"]["api"]
    assert api["command"][api["command"].index("--host") + 1] == "0.0.0.0"
    keys = _env(api)["OODSYNTH_API_KEYS"]
    assert keys.startswith("${OODSYNTH_API_KEYS:?"), keys  # required, no default
    assert "OODSYNTH_API_KEYS" not in _env(compose["services"]["worker"])  # the worker needs none


def test_dashboard_is_pinned_json_protected_and_opt_in(compose):
    dashboard = compose["services"]["dashboard"]
    assert dashboard["profiles"] == ["dashboard"]  # not started by a plain `docker compose up`
    assert "image" not in dashboard  # built here from pinned packages, no third-party image
    dockerfile = dashboard["build"]["dockerfile_inline"]
    assert re.search(r"rq-dashboard==\d+\.\d+\.\d+", dockerfile)
    # The dashboard reads jobs with the rq the project runs (job and registry formats change between majors).
    assert re.search(r"\brq==([\d.]+)", dockerfile)[1] == importlib.metadata.version("rq")
    assert re.search(r"^USER (?!root)", dockerfile, re.M)
    assert "--json" in dashboard["command"]  # JSONSerializer: nothing is unpickled
    env = _env(dashboard)
    assert env["RQ_DASHBOARD_USERNAME"] and "RQ_DASHBOARD_PASSWORD" in env
    assert 'test -n "$$RQ_DASHBOARD_PASSWORD"' in " ".join(dashboard["entrypoint"])  # no password, no start
    assert _published(dashboard) == ["127.0.0.1:9181:9181"]


def test_worker_reserves_a_gpu_and_caches_models(compose):
    worker = compose["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert "gpu" in device["capabilities"] and device["driver"] == "nvidia"
    hf_home = _env(worker)["HF_HOME"]
    volumes = {v.split(":")[1]: v.split(":")[0] for v in worker["volumes"]}
    assert volumes[hf_home] in compose["volumes"]  # a named volume: downloads survive rebuilds


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
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["oodsynth"] == "oodsynth.cli:main"
    import typer.main

    from oodsynth.cli import app

    group = typer.main.get_command(app)
    api_cmd = compose["services"]["api"]["command"]
    assert api_cmd[:2] == ["oodsynth", "serve"]  # uvicorn with the header deadline
    serve_options = {opt for param in group.commands["serve"].params for opt in param.opts}
    assert {token for token in api_cmd if token.startswith("--")} <= serve_options
    dockerfile_cmd = re.search(r"^CMD (\[.*\])$", (REPO / "services/embed_sampler/Dockerfile").read_text(), re.M)
    assert json.loads(dockerfile_cmd.group(1)) == api_cmd

    worker = compose["services"]["worker"]
    assert worker["entrypoint"] == ["oodsynth", "worker"]
    worker_cmd = group.commands["worker"]
    options = {opt for param in worker_cmd.params for opt in param.opts}
    for token in worker["command"]:
        if token.startswith("--"):
            assert token in options, f"'oodsynth worker' has no option {token}"
    # The worker image's own entrypoint is a real module too.
    worker_dockerfile = (REPO / "services/diffusion_worker/Dockerfile").read_text()
    for found in re.findall(r'"-m", "([\w.]+)"', worker_dockerfile):
        assert importlib.util.find_spec(found) is not None, found


def test_images_are_pinned_to_exact_versions(compose):
    """Floating tags (redis:7-alpine, python:3.11-slim) change what runs on a rebuild."""
    exact = re.compile(r"^[\w./-]+(:(\d+\.\d+\.\d+[\w.-]*|RELEASE\.[\w.-]+)|@sha256:[0-9a-f]{64})$")
    images = {name: svc["image"] for name, svc in compose["services"].items() if "image" in svc}
    inline = [
        svc["build"]["dockerfile_inline"]
        for svc in compose["services"].values()
        if "dockerfile_inline" in svc.get("build", {})
    ]
    dockerfiles = [
        (REPO / p).read_text() for p in ("services/embed_sampler/Dockerfile", "services/diffusion_worker/Dockerfile")
    ]
    bases = [line.split()[1] for text in inline + dockerfiles for line in text.splitlines() if line.startswith("FROM ")]
    for ref in [*images.values(), *bases]:
        assert exact.match(ref), f"{ref} is not pinned to an exact version or digest"
    assert len(bases) == 3


def test_every_long_running_service_has_a_healthcheck(compose):
    for name, svc in compose["services"].items():
        if svc.get("restart") == "no":  # one-shot jobs
            continue
        check = svc.get("healthcheck", {}).get("test")
        assert check and check[0] == "CMD", f"{name} has no healthcheck"
    worker = compose["services"]["worker"]["healthcheck"]["test"]
    assert "oodsynth.worker.process import health_check" in worker[-1]


def test_the_worker_health_check_sees_a_live_worker(redis_url):
    from oodsynth.worker.process import build_worker, worker_alive_here

    worker = build_worker(preload=False)
    assert not worker_alive_here(worker.connection)
    worker.register_birth()
    try:
        assert worker_alive_here(worker.connection)
    finally:
        worker.register_death()
    assert not worker_alive_here(worker.connection)


IMAGES = {"api": ("services/embed_sampler", "api"), "worker": ("services/diffusion_worker", "worker")}
TARGET = {"python_version": "3.11", "python_full_version": "3.11.11", "sys_platform": "linux"}
TARGET |= {
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
}


def _lock(path) -> dict[str, tuple[str, list[str]]]:
    """``{name: (version, hashes)}`` of a ``uv pip compile --generate-hashes`` file."""
    from packaging.utils import canonicalize_name

    entries: dict[str, tuple[str, list[str]]] = {}
    name = ""
    for line in path.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9][\w.-]*)==([^\s\\]+)", line):
            name = canonicalize_name(match[1])
            entries[name] = (match[2], [])
        elif match := re.match(r"^\s+--hash=sha256:([0-9a-f]{64})", line):
            entries[name][1].append(match[1])
    return entries


def _project_requirements(extra: str) -> list:
    """The project's requirements with ``extra``, its own ``oodsynth[...]`` references followed."""
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found, todo, seen = [], [extra], set()
    found += [Requirement(r) for r in project["dependencies"]]
    while todo:
        for text in project["optional-dependencies"][todo.pop()]:
            requirement = Requirement(text)
            if requirement.name == "oodsynth":
                todo += [e for e in requirement.extras if e not in seen]
                seen |= requirement.extras
            else:
                found.append(requirement)
    return found


@pytest.mark.parametrize("service", sorted(IMAGES))
def test_images_install_a_hashed_lock_that_satisfies_the_project(compose, service):
    """A rebuild installs what was pinned: every package of the image at an exact version with its hashes
    (pip --require-hashes), the project itself without dependencies, and every requirement of the project's
    extra satisfied by the lock (API: torch is the CPU build the Dockerfile pins from PyTorch's index)."""
    from packaging.utils import canonicalize_name

    folder, extra = IMAGES[service]
    build = compose["services"][service]["build"]
    dockerfile = (REPO / build["context"] / build["dockerfile"]).read_text()
    assert f"COPY {folder}/requirements.lock ./" in dockerfile
    assert "pip install --require-hashes --no-deps -r requirements.lock" in dockerfile
    installs = [line for line in dockerfile.splitlines() if "pip install" in line]
    assert all("--no-deps" in line for line in installs), installs  # nothing resolved at build time
    lock = _lock(REPO / folder / "requirements.lock")
    assert lock and all(re.fullmatch(r"[\w.+!-]+", v) and hashes for v, hashes in lock.values())
    for requirement in _project_requirements(extra):
        if requirement.marker is not None and not requirement.marker.evaluate(TARGET):
            continue
        name = canonicalize_name(requirement.name)
        if service == "api" and name == "torch":
            pinned = re.search(r"torch==([\d.]+)\+cpu", dockerfile)[1]
            assert requirement.specifier.contains(pinned), (pinned, requirement)
            assert "torch" not in lock and "nvidia-cudnn-cu13" not in lock  # the CPU build needs no CUDA wheels
            continue
        assert name in lock, f"{service}: {name} is not in the lock (make lock)"
        assert requirement.specifier.contains(lock[name][0], prereleases=True), (requirement, lock[name][0])
    assert ("fastapi-offline" in lock) == (service == "api")  # /docs without a CDN
