"""Two real servers, started together once per session (each pays seconds for importing torch)
and stopped at the end: ``server`` (small limits, an API key, CORS; started with uvicorn) and
``batching_server`` (batches close at 4 images, started with clip-serve)."""

from __future__ import annotations

import pytest

from .server import API_KEY, Server

LIMITS = dict(
    max_upload_bytes=1024 * 1024,
    api_key=API_KEY,
    cors_origins="http://example.test",
    max_images=2,
    max_labels=3,
    max_templates=2,
    max_label_chars=20,
    max_image_pixels=10_000,
    max_request_pixels=15_000,
    max_template_chars=30,
    max_text_chars=40,
    body_timeout_s=1.5,
)
# batches close on size (4) long before the 5 s wait, so "batched together" is deterministic;
# a lone image waits 5 s for company (batch_gather=always: even with nothing on its way), long
# enough to send SIGTERM while it is in flight, and within the 20 s drain, so it is answered
BATCHING = dict(max_batch=4, batch_wait_ms=5000, batch_gather="always", max_queue=4, drain_seconds=20)


@pytest.fixture(scope="session")
def launched(tiny_checkpoint):
    servers = {
        "main": Server(tiny_checkpoint, command="uvicorn", **LIMITS),
        "batching": Server(tiny_checkpoint, **BATCHING),
    }
    yield servers
    for server in servers.values():
        server.finish()


@pytest.fixture(scope="session")
def server(launched) -> Server:
    return launched["main"].wait_ready()


@pytest.fixture(scope="session")
def batching_server(launched) -> Server:
    return launched["batching"].wait_ready()
