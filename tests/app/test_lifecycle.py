"""Start-up checks, readiness and SIGTERM drain."""

from __future__ import annotations

import io
import json
import random
import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from app.exceptions import StartupError
from app.main import check_startup, create_app
from app.settings import DEFAULT_CHECKPOINT, Settings
from tests.conftest import make_checkpoint, make_unloadable_checkpoint

from .server import AUTH, Server, classify, image_bytes, wait_for_metric


@pytest.fixture(scope="module")
def failed_starts(tmp_path_factory, tiny_checkpoint):
    """Servers that must refuse to start, launched together (each pays for importing torch)."""
    broken = tmp_path_factory.mktemp("broken")
    for name in ("model.safetensors", "vocab.txt"):
        (broken / name).write_bytes((tiny_checkpoint / name).read_bytes())
    (broken / "config.json").write_text(json.dumps({"vision": {"colour": "blue"}}))
    short_vocab = make_unloadable_checkpoint(tmp_path_factory.mktemp("short-vocab"), tiny_checkpoint)
    servers = {
        "missing": Server(tmp_path_factory.mktemp("empty") / "nothing-here"),
        "load fails": Server(short_vocab),
        "broken": Server(broken, command="uvicorn"),
        "bad setting": Server(tiny_checkpoint, max_batch="many"),
    }
    return {name: (server.wait_exit(), server.finish()) for name, server in servers.items()}


@pytest.mark.parametrize(
    "case, words", [("missing", "checkpoint directory not found"), ("broken", "unknown vision field(s): colour")]
)
def test_bad_checkpoint_stops_start_up_with_one_clear_line(failed_starts, case, words):
    returncode, output = failed_starts[case]
    assert returncode == 2
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert words in lines[0] and "CLIP_CHECKPOINT" in lines[0]


@pytest.mark.parametrize(
    "case, damage, words",
    [
        ("empty", lambda data: b"", "not a safetensors file"),
        ("truncated", lambda data: data[: len(data) - 100], "truncated?"),
        ("header only", lambda data: data[: 8 + int.from_bytes(data[:8], "little")], "truncated?"),
    ],
)
def test_broken_weights_stop_start_up_before_binding(tiny_checkpoint, tmp_path, case, damage, words):
    for name in ("config.json", "vocab.txt"):
        (tmp_path / name).write_bytes((tiny_checkpoint / name).read_bytes())
    (tmp_path / "model.safetensors").write_bytes(damage((tiny_checkpoint / "model.safetensors").read_bytes()))
    with pytest.raises(StartupError, match=re.escape(words)):
        check_startup(Settings(checkpoint=tmp_path))


def test_weights_of_the_wrong_shape_stop_start_up_before_binding(tiny_checkpoint, tmp_path, vocab_path):
    make_checkpoint(
        tmp_path, vocab_path, vision=dict(image_size=32, patch_size=8, width=48, num_layers=2, num_heads=2, mlp_dim=64)
    )  # width 48, not the config's 32
    (tmp_path / "config.json").write_bytes((tiny_checkpoint / "config.json").read_bytes())
    with pytest.raises(StartupError, match=r"shape mismatch\(es\) \(file vs config\): .*\(48"):
        check_startup(Settings(checkpoint=tmp_path))


def test_a_model_that_fails_to_load_in_the_background_ends_the_server_non_zero(failed_starts):
    returncode, output = failed_starts["load fails"]
    assert returncode != 0, output
    assert "model failed to load" in output and "vocab" in output.lower(), output
    assert "stopping: the model did not load" in output


def test_a_bad_setting_is_named_by_its_environment_variable(failed_starts):
    returncode, output = failed_starts["bad setting"]
    assert returncode == 2
    assert output.strip() == (
        "clip-serve: invalid setting(s): CLIP_MAX_BATCH='many': Input should be a valid integer, "
        "unable to parse string as an integer"
    ), output


def test_default_checkpoint_is_one_constant_inside_the_package(monkeypatch):
    monkeypatch.delenv("CLIP_CHECKPOINT", raising=False)
    assert Settings().checkpoint == DEFAULT_CHECKPOINT
    assert DEFAULT_CHECKPOINT.parts[-3:] == ("model", "weights", "emoji-clip")
    if not DEFAULT_CHECKPOINT.exists():  # until the bundled weights ship, start-up says where to point
        with pytest.raises(StartupError, match="the bundled default is not in this install: set CLIP_CHECKPOINT"):
            check_startup(Settings())


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_not_ready_before_the_model_has_loaded(tiny_checkpoint):
    """The app before its lifespan has run (loading not started): 503 with Retry-After."""
    app = create_app(Settings(checkpoint=tiny_checkpoint))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"] == "2"
        assert ready.json()["error"] == "not_ready"
        assert (await client.get("/healthz")).status_code == 200
        busy = await client.post("/classify/json", json={"images": [], "labels": ["cat"]})
        assert busy.status_code == 503


def test_a_request_that_outlasts_the_drain_gets_json_503_and_the_server_exits(tiny_checkpoint):
    """A lone image waits 20 s for company; SIGTERM with a 1 s drain cuts it off with the service's
    own 503, not uvicorn's plain-text 500, and the process still exits. (Under the default 30 s
    drain the same request would be answered 200.)"""
    server = Server(tiny_checkpoint, max_batch=4, batch_wait_ms=20_000, batch_gather="always", drain_seconds=1)
    server.wait_ready()
    try:
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(classify, server.url, [("a.png", image_bytes())], ["cat"], timeout=120)
            deadline = time.monotonic() + 60
            while server.metric("clip_queued_images") != 1:
                assert time.monotonic() < deadline, "the image never queued"
                time.sleep(0.05)
            server.process.send_signal(signal.SIGTERM)
            response = in_flight.result()
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.headers["retry-after"] == "2" and response.headers["x-request-id"]
        body = response.json()
        assert body["error"] == "shutting_down" and body["status"] == 503
        assert "drain of 1 s (CLIP_DRAIN_SECONDS)" in body["message"]
        assert server.wait_exit(60) in (0, -signal.SIGTERM)
    finally:
        output = server.finish()
    assert "Application shutdown complete" in output
    assert "Exception in ASGI application" not in output, output


@pytest.mark.parametrize("value, accepted", [("0", True), ("-1", False), ("1.5", False)])
def test_drain_seconds_is_a_whole_number_of_seconds_not_below_zero(monkeypatch, value, accepted):
    from pydantic import ValidationError

    monkeypatch.setenv("CLIP_DRAIN_SECONDS", value)
    if accepted:
        assert Settings().drain_seconds == int(value)
    else:
        with pytest.raises(ValidationError, match="drain_seconds"):
            Settings()


def test_a_client_that_leaves_before_its_answer_takes_its_images_out_of_the_queue(tiny_checkpoint):
    """A lone image waits 20 s for company; its client sends the whole request, then closes the
    connection. The image leaves the queue at once rather than being classified for no one, the
    request is logged and counted as 499, and the server goes on answering, twice on one kept-alive
    connection (the watch for a disconnect must not take a later request's bytes). The second
    carries an image over 1 MiB, which the app closes (a spooled temporary file) after its answer
    has gone: the end of the answer must not be taken for a client leaving."""
    server = Server(tiny_checkpoint, max_batch=4, batch_wait_ms=20_000, batch_gather="always").wait_ready()
    try:
        files = [("images", ("a.png", image_bytes(), "image/png"))]
        request = httpx.Request("POST", f"{server.url}/classify", files=files, data={"labels": "cat"}, headers=AUTH)
        head = "POST /classify HTTP/1.1\r\n" + "".join(f"{key}: {value}\r\n" for key, value in request.headers.items())
        with socket.create_connection(("127.0.0.1", server.port)) as leaving:
            leaving.sendall(head.encode("latin-1") + b"\r\n" + request.read())
            wait_for_metric(server, "clip_queued_images", 1)
        wait_for_metric(server, "clip_queued_images", 0, timeout=10)  # left at once, not run after 20 s
        four = [("images", (f"{i}.png", image_bytes((40 * i, 90, 200)), "image/png")) for i in range(4)]
        noise = Image.frombytes("RGB", (700, 700), random.Random(0).randbytes(700 * 700 * 3))
        large = io.BytesIO()
        noise.save(large, format="PNG")
        assert large.tell() > 1024 * 1024
        with_large = [("images", ("large.png", large.getvalue(), "image/png"))] + four[1:]
        with httpx.Client(headers=AUTH, timeout=60) as client:  # a batch of 4 closes at once
            answers = [
                client.post(f"{server.url}/classify", files=files, data={"labels": "cat"})
                for files in (four, with_large)
            ]
        assert [answer.status_code for answer in answers] == [200, 200], answers[0].text
        assert server.metric('clip_requests_total{route="/classify",status="499"}') == 1
        assert server.metric('clip_requests_total{route="/classify",status="200"}') == 2
        assert server.metric("clip_images_classified_total") == 8
    finally:
        output = server.finish()
    assert re.search(r"POST /classify 499 ", output), output
