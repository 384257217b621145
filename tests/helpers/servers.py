"""Helpers for tests that start a real API server process."""

from __future__ import annotations

import subprocess
import time

import httpx


def wait_healthy(base: str, proc: subprocess.Popen, what: str = "the API", timeout: float = 60) -> None:
    """Poll ``base``/healthz until it answers 200; fail if ``proc`` exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, f"{what} did not start"
        time.sleep(0.1)
