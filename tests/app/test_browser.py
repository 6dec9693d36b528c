"""The demo page and /docs in real headless Chromium (Debian's chromium package), with every
non-loopback request blocked. Set UPDATE_SCREENSHOTS=1 to refresh docs/docs-offline.png (docs/demo.png,
the bundled model on real drawings, comes from scripts/demo_screenshot.py)."""

from __future__ import annotations

import os
import shutil

import pytest
from PIL import Image, ImageDraw

from .cdp import CHROMIUM, Browser
from .server import API_KEY, ROOT

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install chromium); the browser tests need it"
)


@pytest.fixture
def browser():
    browser = Browser()
    yield browser
    browser.close()


def keep_screenshot(png: bytes, tmp_path, name: str, for_docs: bool = True) -> None:
    path = tmp_path / name
    path.write_bytes(png)
    assert Image.open(path).size[0] > 0
    if for_docs and os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, ROOT / "docs" / name)


def test_demo_page_classifies_an_upload_and_draws_the_chart(server, browser, tmp_path):
    picture = tmp_path / "red-balloon.png"
    image = Image.new("RGB", (96, 96), (235, 235, 240))  # under the server's 10000-pixel limit
    ImageDraw.Draw(image).ellipse((18, 12, 78, 72), fill=(210, 30, 40))
    image.save(picture)

    browser.open(server.url + "/")
    browser.set_files("#images", [str(picture)])
    browser.evaluate("document.getElementById('images').dispatchEvent(new Event('change'))")
    browser.evaluate("document.getElementById('labels').value = 'balloon, cat, pizza'")
    browser.evaluate(f"document.getElementById('api-key').value = '{API_KEY}'")
    browser.evaluate("document.getElementById('submit').click()")
    bars = browser.wait_for("document.querySelectorAll('.chart .bar-row').length")
    assert bars == 3
    labels = browser.evaluate("[...document.querySelectorAll('.bar-row > span:first-child')].map(e => e.textContent)")
    assert sorted(labels) == ["balloon", "cat", "pizza"]
    assert browser.evaluate("document.querySelector('.chart h3').textContent") == "red-balloon.png"
    assert browser.evaluate("document.getElementById('error').hidden")
    assert not browser.blocked
    keep_screenshot(browser.screenshot(), tmp_path, "demo.png", for_docs=False)  # the tiny test model's answer

    # a bad request shows its error in words
    browser.evaluate("document.getElementById('labels').value = 'cat, Cat'")
    browser.evaluate("document.getElementById('submit').click()")
    message = browser.wait_for(
        "!document.getElementById('error').hidden && document.getElementById('error').textContent"
    )
    assert "case-insensitively" in message and "422" in message
    assert browser.csp_violations() == []


def test_docs_render_offline(server, browser, tmp_path):
    browser.open(server.url + "/docs")
    operations = browser.wait_for(
        "document.querySelectorAll('.opblock').length >= 8 && "
        "[...document.querySelectorAll('.opblock-summary-path')].map(e => e.textContent)"
    )
    assert "/classify" in "".join(operations) and "/embed/text" in "".join(operations)
    assert not browser.blocked, browser.blocked
    assert all("127.0.0.1" in url or url.startswith("data:") for url in browser.requested), browser.requested
    keep_screenshot(browser.screenshot(), tmp_path, "docs-offline.png")

    # Try it out: Swagger UI's own request to the server runs under the policy too
    browser.evaluate("document.querySelector('.opblock-summary-path[data-path=\"/healthz\"]').click()")
    for button in (".try-out__btn", ".execute"):
        browser.wait_for(f"!!document.querySelector('{button}')")
        browser.evaluate(f"document.querySelector('{button}').click()")
    answer = browser.wait_for("document.querySelector('.live-responses-table tbody .response-col_status')?.textContent")
    assert answer.strip() == "200"
    assert browser.csp_violations() == []


# ReDoc's side menu shows "API docs by Redocly" with a logo from its CDN: the one thing the policy
# (and, offline, the network) refuses; the page works without it.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def test_redoc_renders_offline_under_the_policy(server, browser):
    browser.open(server.url + "/redoc")
    operations = browser.wait_for(
        "document.querySelectorAll('[data-section-id^=\"operation/\"]').length >= 8 && document.body.innerText"
    )
    assert "/classify" in operations and "/embed/text" in operations
    assert [v for v in browser.csp_violations() if REDOC_LOGO not in v] == []
    assert browser.blocked in ([], [REDOC_LOGO])
