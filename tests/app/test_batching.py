"""Dynamic batching and the bounded queue, on a server whose batches close at 4 images (wait 5 s)."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .server import classify, image_bytes, wait_for_metric

IMAGES = [image_bytes(color) for color in ((200, 30, 30), (20, 40, 210), (30, 180, 60), (240, 220, 10))]
LABEL_SETS = [["cat"], ["cat", "dog"], ["pizza", "cat", "a red balloon"], ["dog", "cat"]]


def test_concurrent_requests_share_one_batch_and_logits_do_not_change(server, batching_server):
    count_before = batching_server.metric("clip_batch_size_count")
    sum_before = batching_server.metric("clip_batch_size_sum")
    with ThreadPoolExecutor(5) as pool:
        good = [
            pool.submit(classify, batching_server.url, [(f"{i}.png", image)], labels)
            for i, (image, labels) in enumerate(zip(IMAGES, LABEL_SETS))
        ]
        bad = pool.submit(classify, batching_server.url, [("bad.png", b"not an image")], ["cat"])
        batched = [future.result() for future in good]
    assert bad.result().status_code == 415  # refused before batching; the others are unaffected
    assert all(response.status_code == 200 for response in batched), [r.text for r in batched]
    assert batching_server.metric("clip_batch_size_count") == count_before + 1  # one forward pass ...
    assert batching_server.metric("clip_batch_size_sum") == sum_before + 4  # ... of all four images
    assert batching_server.metric('clip_batch_size_bucket{le="4.0"}') >= 1

    for image, labels, response in zip(IMAGES, LABEL_SETS, batched):
        batched_scores = response.json()["results"][0]["scores"]
        alone = classify(server.url, [("x.png", image)], ["cat"]).json()["results"][0]["scores"][0]
        cat = next(s for s in batched_scores if s["label"] == "cat")
        assert abs(cat["logit"] - alone["logit"]) < 1e-5  # alone, unbatched vs among labels, batched
        unbatched = classify(server.url, [("x.png", image)], labels).json()["results"][0]["scores"]
        for a, b in zip(batched_scores, unbatched):
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-6)


def test_full_queue_answers_503_at_once(batching_server):
    with ThreadPoolExecutor(1) as pool:
        # 3 images wait (the batch closes at 4 or after 5 s); the queue holds 4
        waiting = pool.submit(classify, batching_server.url, [(f"{i}.png", IMAGES[i]) for i in range(3)], ["cat"])
        wait_for_metric(batching_server, "clip_queued_images", 3)
        started = time.monotonic()
        refused = classify(batching_server.url, [("a.png", IMAGES[0]), ("b.png", IMAGES[1])], ["cat"])
        answered_in = time.monotonic() - started
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"] == "queue_full"
        assert answered_in < 4  # not held until the batch ran (the batch waits 5 s)
        assert waiting.result().status_code == 200


# last in this module: it stops the server
def test_sigterm_finishes_the_request_in_flight_within_the_drain(batching_server):
    """5 s of batch wait within a 20 s drain: answered 200 (test_lifecycle.py has the other side)."""
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(classify, batching_server.url, [("a.png", image_bytes())], ["cat", "dog"])
        wait_for_metric(batching_server, "clip_queued_images", 1)  # queued, waiting 5 s for company
        batching_server.process.send_signal(signal.SIGTERM)
        response = in_flight.result()
    assert response.status_code == 200
    assert len(response.json()["results"][0]["scores"]) == 2
    # a clean exit; uvicorn re-raises the signal it handled once shut down, hence -SIGTERM
    assert batching_server.wait_exit(60) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in batching_server.finish()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{batching_server.url}/healthz", timeout=5)


def test_a_lone_request_does_not_wait_for_company_that_is_not_coming(tiny_checkpoint):
    """Under the default CLIP_BATCH_GATHER=incoming a batch waits only while other requests' images
    are decoding: with a 10-minute CLIP_BATCH_WAIT_MS, requests sent one after another are each
    answered, and the queue waits the server records are far below that wait (the bug: 600 s each)."""
    from .server import Server

    server = Server(tiny_checkpoint, batch_wait_ms=600_000).wait_ready()
    try:
        for color in ((200, 30, 30), (20, 40, 210)):
            response = classify(server.url, [("a.png", image_bytes(color))], ["cat", "dog"], timeout=120)
            assert response.status_code == 200, response.text
        assert server.metric("clip_queue_wait_seconds_count") == 2
        assert server.metric("clip_queue_wait_seconds_sum") < 120
    finally:
        server.finish()
