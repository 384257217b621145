"""The README is the front door: it stays short, its links resolve, its figures cite their results files,
and its curl session runs as written against a live `oodsynth serve` on a real Redis."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
import redis

from tests.helpers.paths import REPO
from tests.helpers.servers import wait_healthy
from tests.helpers.toy_banks import toy_bank

README = REPO / "README.md"
README_API = "http://127.0.0.1:8000"  # the address the README's commands use
LINK = re.compile(r"\]\(([^)\s]+)\)")
FIGURE = re.compile(r"[−+-]?\d+\.\d+ ± \d+\.\d+")  # a measured figure: mean ± std


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def curl_block(text: str) -> str:
    """The README's one bash block that talks to the API with curl (the test runs exactly this)."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    (block,) = [b for b in blocks if "curl " in b]
    return block


def test_readme_is_one_screen_per_question():
    lines = readme_text().splitlines()
    assert len(lines) <= 200, len(lines)
    assert lines[3:5] == [
        "make demo   # sets up .venv, then runs the whole job offline on embedded defaults "
        "(Redis, the trained animals decoder)",
        "make test   # sets up .venv with the test extras and runs the whole suite (ruff, then pytest)",
    ]
    assert not re.search(r"(?i)\bissue\s+\d+|#\d{2,}\b", readme_text()), "no issue numbers in the README"


def test_every_relative_link_resolves():
    targets = [t for t in LINK.findall(readme_text()) if not re.match(r"[a-z]+://", t)]
    assert len(targets) >= 15
    missing = [t for t in targets if not (REPO / t.split("#")[0]).exists()]
    assert not missing, missing


def test_every_figure_links_its_results_file():
    """Each line (table row or paragraph) quoting a measured figure links a file under bench/results/, or
    belongs to the results table, whose source file is linked in the paragraph just above it."""
    text = readme_text()
    glance = text.split("## Results at a glance", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"\]\(bench/results/[^)]+\.md\)", glance.split("| row |")[0])
    table_rows = {line for line in glance.splitlines() if line.startswith("|")}
    unlinked = [
        line
        for line in text.splitlines()
        if FIGURE.search(line) and line not in table_rows and "](bench/results/" not in line
    ]
    assert not unlinked, unlinked
    assert sum(bool(FIGURE.search(line)) for line in text.splitlines()) >= 10


def json_values(text: str) -> list:
    """The JSON values printed one after another (curl's answers have no trailing newline)."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while (at := len(text) - len(text[at:].lstrip())) < len(text):
        value, at = decoder.raw_decode(text, at)
        values.append(value)
    return values


@pytest.fixture
def live_api(redis_url, tmp_path):
    """`oodsynth serve` in its own process on a free port, against the session's real Redis."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OODSYNTH_REDIS_URL": redis_url, "OODSYNTH_HOME": str(tmp_path / "home")}
    env.pop("OODSYNTH_API_KEYS", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from oodsynth.cli import app; app()", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc, "oodsynth serve")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow  # an `oodsynth serve` process
def test_the_readme_curl_session_runs_against_a_live_server(live_api, redis_url, tmp_path):
    missing = [tool for tool in ("bash", "curl", "jq") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the README's session needs {', '.join(missing)} on the PATH")
    block = curl_block(readme_text())
    assert README_API in block and "/fits" in block and "/sample" in block and "/generate" in block
    assert "/jobs/" in block
    (tmp_path / "bank.npz").write_bytes(toy_bank(n_classes=3).to_bytes())

    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.replace(README_API, live_api)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr + run.stdout
    fit, state = json_values(run.stdout)  # POST /fits's answer, then the job's state from GET /jobs/{id}
    assert fit["name"] == "mybank" and fit["kind"] == "vmf" and fit["n_classes"] == 3, fit
    assert state == {"status": "queued", "progress": {"done": 0, "total": 12}}, state  # 4 vectors x 3 classes
    assert redis.Redis.from_url(redis_url).exists("oodsynth:fit:mybank") == 1  # stored in the real Redis
