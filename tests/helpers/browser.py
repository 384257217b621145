"""Debian's headless Chromium through Selenium, for the tests that look at pages as a person would."""

from __future__ import annotations

import json
import shutil

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
NO_CHROMIUM = "Debian's chromium and chromium-driver are not installed (.ci/run does)"
# Every host name but the loopback resolves to nothing: the page has no network beyond this machine.
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"


def chromium(*, offline: bool = False, log_requests: bool = False):
    """A headless Chromium driver; ``offline``: no name resolves but the loopback; ``log_requests``: the
    performance log records every request (``requested_urls``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    if offline:
        options.add_argument(OFFLINE)
        # Belt and braces: every other request goes to a proxy that is not there (the loopback bypasses proxies).
        options.add_argument("--proxy-server=http://127.0.0.1:9")
    if log_requests:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def requested_urls(driver) -> list[str]:
    """Every URL the page asked for since the last call (DevTools ``Network.requestWillBeSent`` events)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls
