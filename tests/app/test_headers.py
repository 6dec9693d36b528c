"""Hardening headers on the real server's answers: pages, files, the JSON API and errors, including
those sent by middleware before any route runs. tests/app/test_browser.py checks in Chromium that
the pages still work under the policy."""

from __future__ import annotations

import base64
import hashlib
import re

import httpx
import pytest

from .server import AUTH

OPEN = [
    "/",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/static/demo.js",
    "/static/demo.css",
    "/docs-assets/swagger-ui-bundle.js",
    "/healthz",
]


def directives(response: httpx.Response) -> dict[str, list[str]]:
    policy = response.headers["content-security-policy"]
    return {name: sources for name, *sources in (part.split() for part in policy.split(";"))}


def assert_hardened(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    policy = directives(response)
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["default-src"] == ["'none'"]
    assert "'unsafe-inline'" not in policy["script-src"] and "'unsafe-eval'" not in policy["script-src"]


@pytest.mark.parametrize("path", OPEN)
def test_pages_files_and_open_routes_are_hardened(server, path):
    response = httpx.get(f"{server.url}{path}", timeout=30)
    assert response.status_code == 200
    assert_hardened(response)


def test_json_api_answers_and_errors_are_hardened(server):
    answers = [
        httpx.post(f"{server.url}/embed/text", headers=AUTH, json={"texts": ["cat"]}, timeout=30),  # 200
        httpx.post(f"{server.url}/embed/text", headers=AUTH, json={"texts": []}, timeout=30),  # 422, a route's
        httpx.get(f"{server.url}/v1/model", timeout=30),  # 401, sent by middleware
        httpx.get(f"{server.url}/nowhere", timeout=30),  # 404
    ]
    assert [answer.status_code for answer in answers] == [200, 422, 401, 404]
    for answer in answers:
        assert_hardened(answer)


def test_swagger_ui_runs_only_its_own_inline_script(server):
    page = httpx.get(f"{server.url}/docs", timeout=30)
    inline = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert directives(page)["script-src"] == ["'self'", f"'sha256-{digest}'"]
    assert "'unsafe-inline'" not in directives(page)["style-src"]


def test_only_redoc_allows_inline_styles(server):
    pages = {path: directives(httpx.get(f"{server.url}{path}", timeout=30)) for path in ("/", "/docs", "/redoc")}
    assert [path for path, policy in pages.items() if "'unsafe-inline'" in policy["style-src"]] == ["/redoc"]
