"""Headless Chromium driven over the DevTools protocol (websocket-client), for the browser tests."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
from urllib.parse import urlparse

import httpx
import websocket

from .server import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LOOPBACK = {"127.0.0.1", "localhost", "[::1]"}
# runs in each page before its own scripts (DevTools' scripts are not subject to the page's policy)
RECORD_CSP_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => window.cspViolations.push(
    `${event.effectiveDirective} refused ${event.blockedURI || "an inline one"} (${event.sourceFile}:${event.lineNumber})`
), true);
"""


class Browser:
    """One headless Chromium with one page; every request to a non-loopback host is failed and recorded."""

    def __init__(self):
        self.port = free_port()
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                f"--user-data-dir={self.profile}",
                f"--remote-debugging-port={self.port}",
                "--remote-allow-origins=*",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--window-size=1100,900",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.blocked: list[str] = []
        self.requested: list[str] = []
        self.security_messages: list[str] = []
        self._next_id = 0
        self.socket = websocket.create_connection(self._page_socket_url(), timeout=60, suppress_origin=True)
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Log.enable")
        self.call("Page.addScriptToEvaluateOnNewDocument", source=RECORD_CSP_VIOLATIONS)
        self.call("Fetch.enable", patterns=[{"urlPattern": "*"}])

    def _page_socket_url(self) -> str:
        deadline = time.monotonic() + 60
        while True:
            try:
                pages = httpx.get(f"http://127.0.0.1:{self.port}/json/list", timeout=2).json()
                return next(page["webSocketDebuggerUrl"] for page in pages if page["type"] == "page")
            except (httpx.TransportError, StopIteration, ValueError):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("chromium did not start") from None
                time.sleep(0.2)

    def call(self, method: str, **params):
        self._next_id += 1
        call_id = self._next_id
        self.socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if message.get("method") == "Fetch.requestPaused":
                self._gate(message["params"])
            elif message.get("method") == "Log.entryAdded" and message["params"]["entry"]["source"] == "security":
                self.security_messages.append(message["params"]["entry"]["text"])

    def _gate(self, paused: dict) -> None:
        url = paused["request"]["url"]
        self.requested.append(url)
        host = urlparse(url).hostname or ""
        self._next_id += 1
        if urlparse(url).scheme in ("data", "blob") or host in LOOPBACK or host == "::1":
            method, params = "Fetch.continueRequest", {"requestId": paused["requestId"]}
        else:
            self.blocked.append(url)
            method, params = "Fetch.failRequest", {"requestId": paused["requestId"], "errorReason": "BlockedByClient"}
        self.socket.send(json.dumps({"id": self._next_id, "method": method, "params": params}))

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression}")
            time.sleep(0.1)
        return value

    def csp_violations(self) -> list[str]:
        """What the page's Content Security Policy refused so far: the page's own reports, then
        Chromium's security messages (which also cover workers)."""
        return self.evaluate("window.cspViolations") + self.security_messages

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def set_files(self, selector: str, paths: list[str]) -> None:
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", nodeId=node, files=paths)

    def screenshot(self, full_page: bool = False) -> bytes:
        """The viewport, or with ``full_page`` the whole page however long it is."""
        options = {}
        if full_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            options = {
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
            }
        return base64.b64decode(self.call("Page.captureScreenshot", format="png", **options)["data"])

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            shutil.rmtree(self.profile, ignore_errors=True)
