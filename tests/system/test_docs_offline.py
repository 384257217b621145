"""``/docs`` and ``/redoc`` render in headless Chromium with no network but the loopback, and every URL the pages
request is the server's own (their assets come from a package, not a CDN)."""

from __future__ import annotations

import socket
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from tests.helpers.browser import CHROMEDRIVER, CHROMIUM, NO_CHROMIUM, chromium, requested_urls
from tests.helpers.servers import wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason=NO_CHROMIUM)]


@pytest.fixture(scope="module")
def api_url(tmp_path_factory):
    """The API under uvicorn in its own process (no Redis needed to serve the docs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tmp_path_factory.mktemp("docs-store")
    args = [sys.executable, "-m", "uvicorn", "services.embed_sampler.app:app", "--host", "127.0.0.1"]
    env = {"PYTHONPATH": ":".join(sys.path), "OODSYNTH_STORE": str(store), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([*args, "--port", str(port), "--log-level", "warning"], env=env)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base, proc)
    yield base
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    driver = chromium(offline=True, log_requests=True)
    yield driver
    driver.quit()


def wait_for(browser, selector: str, timeout: float = 30):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(ec.visibility_of_element_located((By.CSS_SELECTOR, selector)))


def only_local(urls: list[str], base: str) -> None:
    host = urlsplit(base).netloc
    foreign = [u for u in urls if urlsplit(u).scheme in ("http", "https", "ws", "wss") and urlsplit(u).netloc != host]
    assert urls and not foreign, foreign


def test_the_network_is_really_off(browser, api_url):
    """The checks below mean something: a CDN asset does not load in this browser."""
    from selenium.common.exceptions import WebDriverException

    with pytest.raises(WebDriverException, match="ERR_"):
        browser.get("https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css")


def test_swagger_ui_renders_the_api_offline(browser, api_url):
    requested_urls(browser)  # drop what came before
    browser.get(f"{api_url}/docs")
    wait_for(browser, "#swagger-ui .swagger-ui .info .title")
    assert "oodsynth embed_sampler" in browser.find_element("css selector", ".info .title").text
    operations = wait_for(browser, ".opblock-summary-path")  # the operations came from /openapi.json
    assert operations.text.startswith("/")
    assert browser.find_elements("css selector", ".opblock") and "/fits" in browser.page_source
    urls = requested_urls(browser)
    only_local(urls, api_url)
    assert any(u.endswith("/docs-assets/swagger-ui-bundle.js") for u in urls)
    assert any(u.endswith("/openapi.json") for u in urls)


def test_redoc_renders_the_api_offline(browser, api_url):
    requested_urls(browser)
    browser.get(f"{api_url}/redoc")
    title = wait_for(browser, ".api-info h1")
    assert "oodsynth embed_sampler" in title.text
    assert browser.find_elements("css selector", "[data-section-id^='tag/']")  # operations grouped by tag
    urls = requested_urls(browser)
    only_local(urls, api_url)
    assert any(u.endswith("/docs-assets/redoc.offline.js") for u in urls)
