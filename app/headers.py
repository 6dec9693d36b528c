"""Hardening headers on every response: no MIME sniffing, no referrer, no framing, and a Content
Security Policy that lets the demo page and the offline API docs load only this server's own files
(the page holds an API-key field: no injected or third-party script may read it)."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Every directive the pages need, and nothing else: default-src 'none' refuses whatever is not named.
POLICY: dict[str, tuple[str, ...]] = {
    "default-src": ("'none'",),
    "script-src": ("'self'",),
    "style-src": ("'self'",),
    # data: for the icons inlined in Swagger UI's and ReDoc's CSS and markup; blob: for the demo's previews
    "img-src": ("'self'", "data:", "blob:"),
    "connect-src": ("'self'",),
    # ReDoc builds its search index in a Web Worker made from a Blob
    "worker-src": ("blob:",),
    "base-uri": ("'none'",),
    "form-action": ("'self'",),
    "frame-ancestors": ("'none'",),
}

HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}

_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


def content_security_policy(extra: Mapping[str, Iterable[str]] | None = None) -> str:
    """The policy, with ``extra`` sources added to its directives."""
    extra = extra or {}
    return "; ".join(
        " ".join((directive, *sources, *extra.get(directive, ()))) for directive, sources in POLICY.items()
    )


def policy_allowing_inline(html: str) -> str:
    """The policy plus the sha256 of each inline <script> and <style> of ``html`` (a page we
    generate, such as FastAPI's Swagger UI page with its inline start-up script): those run, an
    injected one does not, and no 'unsafe-inline' is needed."""
    extra: dict[str, list[str]] = {"script-src": [], "style-src": []}
    for tag, body in _INLINE.findall(html):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        extra[f"{tag}-src"].append(f"'sha256-{digest}'")
    return content_security_policy(extra)


class SecurityHeaders:
    """Adds HEADERS and the policy to every HTTP response that does not set its own."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.defaults = [(name.encode(), value.encode()) for name, value in HEADERS.items()]
        self.defaults.append((b"content-security-policy", content_security_policy().encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                message["headers"] = headers + [(name, value) for name, value in self.defaults if name not in present]
            await send(message)

        await self.app(scope, receive, send_hardened)
