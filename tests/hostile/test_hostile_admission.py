"""Admission before parsing (issue 32, item 1): a bank is judged from its archive's declared arrays, a body
from its declared size and its bytes, before anything is inflated or decoded.

Round three found a valid 7.3 MB bank that expands to 0.97 GiB accepted (API 622 -> 5,605 MB), and eight
16 MiB ``/generate`` bodies of inline vectors taking the API to 2.9 GB.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
from fastapi.testclient import TestClient
from hostile_helpers import first_error, post_fit

from oodsynth.config import get_settings
from services.embed_sampler.app import create_app
from tests.helpers.servers import wait_healthy

GIB_ROWS, DIM = 349_525, 768  # float32 features of 1.0 GiB


def expanding_bank(path: Path, rows: int = GIB_ROWS, dim: int = DIM) -> None:
    """A valid bank (unit rows, two classes) whose features take ``rows x dim`` float32 once inflated, deflated
    to a few MB; written a block at a time, so the test never holds the array either."""
    row = np.full(dim, 1 / np.sqrt(dim), np.float32)
    block_rows = 4096
    block = np.tile(row, (block_rows, 1)).tobytes()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("features.npy", "w", force_zip64=True) as member:
            header = {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)}
            np.lib.format.write_array_header_1_0(member, header)
            for start in range(0, rows, block_rows):
                member.write(block[: min(block_rows, rows - start) * dim * 4])
        small = {
            "labels": np.arange(rows, dtype=np.int64) % 2,
            "anchors": np.stack([row, -row]),
            "class_names": np.array(["a", "b"]),
        }
        for name, array in small.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, array)


@pytest.fixture
def default_api(redis_url):
    """The API under its default caps (256 MiB uploads and banks)."""
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        yield client


def test_a_bank_expanding_to_a_gib_is_refused_413_before_any_array_is_inflated(default_api, tmp_path):
    """A valid bank of a few MB that expands to 1 GiB: refused from its .npy headers with 413 naming the
    limit and the field, without allocating the array (it was accepted, and took the API to 5.6 GB)."""
    expanding_bank(tmp_path / "bank.npz")
    data = (tmp_path / "bank.npz").read_bytes()
    assert len(data) < 16 * 2**20
    tracemalloc.start()  # numpy reports its buffers to tracemalloc: a 1 GiB array would show
    try:
        start = time.monotonic()
        r = post_fit(default_api, data=data)
        seconds, peak = time.monotonic() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.status_code == 413 and first_error(r)["loc"] == ["body", "file"], r.text
    msg = first_error(r)["msg"]
    assert f"limit of {256 * 2**20} bytes" in msg and "OODSYNTH_MAX_BANK_BYTES" in msg and "features" in msg, msg
    assert peak < 8 * len(data) + 32 * 2**20, f"{peak / 2**20:.0f} MiB allocated to refuse it"
    assert seconds < 10
    assert default_api.get("/fits").json() == {"fits": []}


def _asgi_post(path: str, method: str, content_type: str, receive) -> list[dict]:
    """The app's answer to a request with a body, driven through ASGI by ``receive`` (the server side of the body)."""
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", content_type.encode())] + receive.headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(create_app()(scope, receive, send))
    return sent


class Body:
    """A request body as a server hands it over: ``chunk`` bytes per message, ``total`` in all (None: endless),
    with the ``declared`` Content-Length (None: chunked); counts what the app read."""

    def __init__(self, chunk: int, total: int | None, declared: int | None = None, prefix: bytes = b""):
        self.chunk, self.total, self.read, self.prefix = chunk, total, 0, prefix
        self.headers = [] if declared is None else [(b"content-length", str(declared).encode())]

    async def __call__(self) -> dict:
        n = self.chunk if self.total is None else min(self.chunk, self.total - self.read)
        self.read += n
        more = self.total is None or self.read < self.total
        data, self.prefix = (self.prefix + b"1" * n)[:n], b""
        return {"type": "http.request", "body": data, "more_body": more}


def _body_routes() -> list[tuple[str, str, str]]:
    """Every operation of the OpenAPI document that takes a body: path (parameters filled), method, content type."""
    found = []
    for path, operations in create_app().openapi()["paths"].items():
        for method, operation in operations.items():
            for content_type in operation.get("requestBody", {}).get("content", {}):
                multipart = content_type.startswith("multipart/")
                filled = re.sub(r"\{[^}]+\}", "x", path)
                found.append((filled, method.upper(), "multipart/form-data; boundary=x" if multipart else content_type))
    assert {p for p, _, _ in found} >= {"/fits", "/sample", "/generate"}, found
    return found


def test_a_declared_content_length_over_the_cap_is_refused_before_a_byte_is_read(caps):
    """Every route with a body: a declared 1 TB body answers 413 naming the cap, and the app never reads it."""
    for path, method, content_type in _body_routes():
        body = Body(2**16, 2**40, declared=2**40)
        sent = _asgi_post(path, method, content_type, body)
        assert sent[0]["status"] == 413 and b"bytes" in sent[1]["body"], (path, sent)
        assert body.read == 0, path


# An upload's part headers, then its file's bytes without end: a multipart parser reads on past this.
FILE_PART = b'--x\r\nContent-Disposition: form-data; name="file"; filename="b.npz"\r\n\r\n'


def test_a_chunked_body_over_the_cap_is_cut_off_while_it_is_read(caps):
    """An endless body without Content-Length: 413 once the cap is passed, one chunk past it at most."""
    caps = {"application/json": get_settings().max_request_bytes, "multipart": get_settings().max_upload_bytes}
    for path, method, content_type in _body_routes():
        body = Body(2**14, None, prefix=FILE_PART if content_type.startswith("multipart") else b"")
        sent = _asgi_post(path, method, content_type, body)
        cap = caps["multipart" if content_type.startswith("multipart") else "application/json"]
        assert sent[0]["status"] == 413, (path, sent)
        assert body.read <= cap + 2**14, (path, body.read, cap)


def _peak_rss(pid: int, stop: threading.Event, peaks: list[int]) -> None:
    process = psutil.Process(pid)
    while not stop.is_set():
        peaks.append(process.memory_info().rss)
        time.sleep(0.02)


@pytest.mark.slow  # an `oodsynth serve` process
def test_eight_bodies_of_small_numbers_take_their_decoded_size_from_the_budget(redis_url, tmp_path):
    """Eight 4 MiB /generate bodies of the value ``1`` (2 bytes each, ~100 MB each once decoded) sent at once:
    the budget admits what fits and answers 429 with Retry-After to the rest (without it the API grew by 601 MB
    here; with it by 134 MB)."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "OODSYNTH_HOME": str(tmp_path / "home"),
        "OODSYNTH_MAX_REQUEST_BYTES": str(4 * 2**20),
        "OODSYNTH_HEAVY_MEMORY_BUDGET_BYTES": str(256 * 2**20),
    }
    env.pop("OODSYNTH_API_KEYS", None)
    serve = [sys.executable, "-c", "from oodsynth.cli import app; app()", "serve", "--port", str(port)]
    proc = subprocess.Popen(serve, env=env)
    row = "[" + ",".join(["1"] * DIM) + "]"  # the case of bench/hostile_bodies.py --compact, at 3.9 MiB
    rows = int(3.9 * 2**20 / (len(row) + 3))
    body = ('{"dataset": "d", "fit": "none", "classes": [' + ",".join(["0"] * rows) + '], "vectors": [').encode()
    body += (",".join([row] * rows) + "]}").encode()
    headers = {"content-type": "application/json"}
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, proc, "serve")
        with httpx.Client(base_url=base, timeout=120) as client:
            client.post("/generate", content=b'{"dataset": "d"}', headers=headers)  # warm the route
            idle = psutil.Process(proc.pid).memory_info().rss
            stop, peaks = threading.Event(), []
            sampler = threading.Thread(target=_peak_rss, args=(proc.pid, stop, peaks))
            sampler.start()
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda _: client.post("/generate", content=body, headers=headers), range(8)))
            stop.set()
            sampler.join()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    statuses = sorted(r.status_code for r in answers)
    growth = (max(peaks) - idle) / 2**20
    assert growth < 400, f"the API grew by {growth:.0f} MB ({statuses})"
    assert set(statuses) <= {404, 422, 429} and 429 in statuses, statuses  # 404: no such fit
    assert all(r.headers.get("retry-after") for r in answers if r.status_code == 429)
