"""docs/demo.png: the demo page in headless Chromium, the bundled model classifying three Twemoji
drawings (the test style: never trained on) among five plain-word labels.

    .venv/bin/python scripts/demo_screenshot.py     # needs chromium and the fetched emoji packages

It starts the real clip-serve with no settings (the bundled checkpoint) and drives the page as the
browser tests do (tests/app/cdp.py), every non-loopback request blocked.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.data.emoji_sources import default_cache_dir  # noqa: E402
from tests.app.cdp import Browser  # noqa: E402
from tests.app.server import Server  # noqa: E402

TWEMOJI = default_cache_dir() / "emoji-datasource-twitter-16.0.0" / "package" / "img" / "twitter" / "64"
PICTURES = {"1f431.png": "cat face", "1f355.png": "pizza", "1f680.png": "rocket"}
LABELS = "cat, dog, pizza, rocket, car"


def main() -> int:
    pictures = [TWEMOJI / name for name in PICTURES]
    missing = [str(path) for path in pictures if not path.is_file()]
    if missing:
        print(f"not found: {', '.join(missing)}: run python -m model.data.emoji fetch (needs npm)", file=sys.stderr)
        return 1
    server = Server(None).wait_ready()
    browser = Browser()
    try:
        browser.open(server.url + "/")
        browser.set_files("#images", [str(path) for path in pictures])
        browser.evaluate("document.getElementById('images').dispatchEvent(new Event('change'))")
        browser.evaluate(f"document.getElementById('labels').value = '{LABELS}'")
        browser.evaluate("document.getElementById('submit').click()")
        browser.wait_for(f"document.querySelectorAll('.chart').length == {len(pictures)}")
        assert not browser.blocked, browser.blocked
        (ROOT / "docs" / "demo.png").write_bytes(browser.screenshot(full_page=True))
    finally:
        browser.close()
        server.finish()
    print(f"wrote {ROOT / 'docs' / 'demo.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
