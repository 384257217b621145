"""The gallery in a real browser (Debian's headless Chromium through Selenium) over real HTTP, API and CLI."""

from __future__ import annotations

import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oodsynth.service.gallery import VERIFIED_AT
from oodsynth.store.results import ImageRecord, ResultStore
from tests.helpers.browser import CHROMEDRIVER, CHROMIUM, NO_CHROMIUM, chromium

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason=NO_CHROMIUM)]
CLASSES = ("airplane", "bird", "cat", "deer", "sea#star?")  # '#' and '?' must survive in links (issue 32)
SAMPLERS = ("boundary_crossing", "knn_boundary")
N_IMAGES = 10_000
FIRST_PAINT_TARGET_MS = 1000


def write_store(root: Path, n: int = N_IMAGES, seed: int = 0) -> ResultStore:
    """``n`` smooth random 64x64 images over 5 classes and 2 samplers, some verified under the threshold, with
    the vector diagnostics the gallery sorts and filters on."""
    rng = np.random.default_rng(seed)
    store = ResultStore(root)
    items = []
    for i in range(n):
        c = i % len(CLASSES)
        img = Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8)).resize((64, 64), Image.BICUBIC)
        record = ImageRecord(
            image_id=f"c{c}-{i:05d}",
            class_index=c,
            class_name=CLASSES[c],
            vector_id=f"s:{i}",
            sampler=SAMPLERS[i % 3 == 0],
            seed=i,
            model="blobs",
            prompt=f"a photo of <outlier:{CLASSES[c]}>",
            diagnostics={
                "verified_id_percentile": float(rng.uniform(0, 60)),
                "knn_distance": float(rng.uniform()),
                "margin": float(rng.normal(0, 0.2)),
                "id_percentile": float(rng.uniform(0, 5)),
            },
            decode={"preset": "fast", "steps": 4},
            job_id=f"job-{i // 100}",
        )
        items.append((record, img))
    store.write_images("animals", items)
    return store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery") / "store"
    write_store(root)
    return root


def serve(args: list[str], store_root: Path, port: int, ready_path: str):
    """A server process (the test's autouse fixtures reset settings in this one), its store = the test store."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OODSYNTH_STORE": str(store_root)}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(f"http://127.0.0.1:{port}{ready_path}")
    except OSError:
        proc.kill()
        raise AssertionError(proc.communicate()[0].decode()[-2000:]) from None
    return proc


@pytest.fixture(scope="module")
def api_url(store_root):
    """The API (services.embed_sampler.app) under uvicorn in its own process, on a free port."""
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "services.embed_sampler.app:app", "--host", "127.0.0.1"]
    ready = "/datasets/animals/gallery?per_page=1"
    proc = serve([*args, "--port", str(port), "--log-level", "warning"], store_root, port, ready)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def first_paint_ms(browser) -> float:
    """The page's first contentful paint, from navigation start (the entry may land just after the load event)."""
    from selenium.webdriver.support.ui import WebDriverWait

    script = "const e = performance.getEntriesByName('first-contentful-paint')[0]; return e ? e.startTime : null"
    return WebDriverWait(browser, 10).until(lambda d: d.execute_script(script))


def loaded_images(browser, n: int) -> list[int]:
    """naturalWidth of the first ``n`` images once they have loaded (0 = broken)."""
    from selenium.webdriver.support.ui import WebDriverWait

    script = f"return Array.from(document.images).slice(0, {n}).every(i => i.complete)"
    WebDriverWait(browser, 20).until(lambda d: d.execute_script(script))
    return browser.execute_script(f"return Array.from(document.images).slice(0, {n}).map(i => i.naturalWidth)")


def wait_page(browser, fragment: str) -> None:
    """Wait for the navigation that the filter form or a link started (its URL has ``fragment``) to finish."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 20).until(
        lambda d: fragment in d.current_url and d.execute_script("return document.readyState") == "complete"
    )


def cards(browser) -> list[tuple[str, str]]:
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('figure.card')).map(f => [f.dataset.class, f.dataset.sampler])"
    )


def card_values(browser, key: str) -> list[float]:
    """Each card's ``data-<key>`` (``pct``: the image ID percentile, ``knn``: the k-NN distance)."""
    return [
        float(v)
        for v in browser.execute_script(
            f"return Array.from(document.querySelectorAll('figure.card')).map(f => f.dataset.{key})"
        )
    ]


@pytest.mark.parametrize("per_page", [100, 1000])
def test_a_10000_image_dataset_paints_fast_and_its_images_render(api_url, browser, per_page):
    url = f"{api_url}/datasets/animals/gallery?per_page={per_page}&sort=id_percentile"
    paints = []
    for _ in range(3):
        browser.get("about:blank")
        browser.get(url)  # a fresh navigation each time: the server selects, sorts and renders every time
        paints.append(first_paint_ms(browser))
        assert len(cards(browser)) == per_page
    median = statistics.median(paints)
    print(f"first contentful paint, {N_IMAGES} images, {per_page} a page: {paints} ms (median {median:.0f})")
    assert median < FIRST_PAINT_TARGET_MS
    assert f"{N_IMAGES} images" in browser.find_element("css selector", "h1").text
    assert all(w == 64 for w in loaded_images(browser, 20))  # the images in view came from the store and decoded
    text = browser.find_element("css selector", "figure.card").text
    assert "ID pct" in text and "k-NN" in text


def test_filters_and_pages(api_url, browser, store_root):
    from selenium.webdriver.support.ui import Select

    records = ResultStore(store_root).records("animals")
    browser.get(f"{api_url}/datasets/animals/gallery?per_page=1000")
    Select(browser.find_element("name", "class")).select_by_visible_text("cat")  # onchange submits the form
    wait_page(browser, "class=cat")
    shown = cards(browser)
    assert len(shown) == 1000 and {c for c, _ in shown} == {"cat"}
    Select(browser.find_element("name", "sampler")).select_by_visible_text("knn_boundary")
    wait_page(browser, "sampler=knn_boundary")
    expected = [r for r in records if r.class_name == "cat" and r.sampler == "knn_boundary"]
    header = browser.find_element("css selector", "h1").text
    assert f"{len(expected)} images" in header and {tuple(c) for c in cards(browser)} == {("cat", "knn_boundary")}
    Select(browser.find_element("name", "verified")).select_by_visible_text("yes")
    wait_page(browser, "verified=yes")
    verified = [r for r in expected if r.diagnostics["verified_id_percentile"] <= VERIFIED_AT]
    assert 0 < len(verified) < len(expected) and len(cards(browser)) == len(verified)
    assert all(b.get_attribute("class") == "badge yes" for b in browser.find_elements("css selector", ".badge"))
    assert all(w == 64 for w in loaded_images(browser, 20))
    browser.get(f"{api_url}/datasets/animals/gallery?per_page=300")
    browser.find_element("css selector", "a[rel=next]").click()
    wait_page(browser, "page=2")
    assert "page 2 of 34" in browser.find_element("css selector", "h1").text and len(cards(browser)) == 300


def set_number(browser, name: str, value: float) -> None:
    """Type into the number input ``name`` and fire its change (the form submits on change)."""
    field = browser.find_element("name", name)
    field.clear()
    field.send_keys(str(value))
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", field)


def bar_counts(browser) -> list[int]:
    return [int(r.get_attribute("data-count")) for r in browser.find_elements("css selector", "#histogram rect")]


def test_sort_ranges_histogram_and_jump_change_what_the_page_shows(api_url, browser, store_root):
    from selenium.webdriver.support.ui import Select

    records = ResultStore(store_root).records("animals")
    browser.get(f"{api_url}/datasets/animals/gallery?per_page=50")
    assert sum(bar_counts(browser)) == N_IMAGES  # the histogram counts every matching image, not one page
    Select(browser.find_element("name", "sort")).select_by_visible_text("k-NN distance")
    wait_page(browser, "sort=knn_distance")
    Select(browser.find_element("name", "order")).select_by_visible_text("descending")
    wait_page(browser, "order=desc")
    knn = card_values(browser, "knn")
    assert knn == sorted(knn, reverse=True) and knn[0] == pytest.approx(
        max(r.diagnostics["knn_distance"] for r in records), rel=1e-3
    )
    set_number(browser, "id_min", 20)
    wait_page(browser, "id_min=20")
    set_number(browser, "id_max", 40)
    wait_page(browser, "id_max=40")
    set_number(browser, "knn_max", 0.5)
    wait_page(browser, "knn_max=0.5")
    inside = [
        r
        for r in records
        if 20 <= r.diagnostics["verified_id_percentile"] <= 40 and r.diagnostics["knn_distance"] <= 0.5
    ]
    assert f"{len(inside)} images" in browser.find_element("css selector", "h1").text
    assert all(20 <= p <= 40 for p in card_values(browser, "pct")) and all(
        k <= 0.5 for k in card_values(browser, "knn")
    )
    counts = bar_counts(browser)
    assert sum(counts) == len(inside) and all(c == 0 for i, c in enumerate(counts) if not 3 <= i <= 8)
    set_number(browser, "page", 3)  # the jump form
    browser.find_element("css selector", "#jump button").click()
    wait_page(browser, "page=3")
    assert "page 3 of" in browser.find_element("css selector", "h1").text and "id_min=20" in browser.current_url
    browser.get(f"{api_url}/datasets/animals/gallery")
    browser.find_elements("css selector", "#histogram a")[1].click()  # the bar of ID percentiles 5-10
    wait_page(browser, "id_max=10")
    assert all(5 <= p <= 10 for p in card_values(browser, "pct"))


def test_a_class_named_with_hash_and_question_mark_shows_its_images(api_url, browser):
    from selenium.webdriver.support.ui import Select

    browser.get(f"{api_url}/datasets/animals/gallery?per_page=25")
    Select(browser.find_element("name", "class")).select_by_visible_text("sea#star?")
    wait_page(browser, "class=sea%23star%3F")
    assert {c for c, _ in cards(browser)} == {"sea#star?"} and all(w == 64 for w in loaded_images(browser, 20))
    browser.find_element("css selector", "a[rel=next]").click()
    wait_page(browser, "page=2")
    assert {c for c, _ in cards(browser)} == {"sea#star?"} and "page 2 of 80" in browser.find_element(
        "css selector", "h1"
    ).text


def test_past_the_last_page_a_browser_gets_a_page_naming_the_field(api_url, browser):
    browser.get(f"{api_url}/datasets/animals/gallery?class=cat&page=999")
    assert browser.find_element("css selector", "h1").text.startswith("422")
    assert browser.find_element("css selector", "#errors li").get_attribute("data-field") == "page"
    browser.find_element("id", "retry").click()  # back to the same filters, from page 1
    wait_page(browser, "class=cat")
    assert "page=" not in browser.current_url and {c for c, _ in cards(browser)} == {"cat"}


def test_cli_serves_the_same_page_without_the_api(api_url, store_root, tmp_path):
    port = free_port()
    args = ["gallery", "animals", "--store", str(store_root), "--port", str(port)]
    proc = serve([sys.executable, "-c", "from oodsynth.cli import main; main()", *args], store_root, port, "/")
    try:
        query = "/datasets/animals/gallery?class=bird&verified=no&per_page=50"
        cli_page = urllib.request.urlopen(f"http://127.0.0.1:{port}{query}").read()
        api_page = urllib.request.urlopen(f"{api_url}{query}").read()
        assert cli_page == api_page and cli_page.count(b'<figure class="card"') == 50
        src = re.search(rb'src="(images/[^"]+)"', cli_page).group(1).decode()
        png = urllib.request.urlopen(f"http://127.0.0.1:{port}/datasets/animals/{src}").read()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        past = urllib.request.Request(f"http://127.0.0.1:{port}{query}&page=99", headers={"Accept": "text/html"})
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(past)
        page = answer.value.read().decode()
        assert answer.value.code == 422 and '<li data-field="page">' in page and "<h1>422" in page
    finally:
        proc.terminate()
        proc.wait(10)
