"""bench/load.py, the closed-loop load generator, against the real test server: what answers 200 is
counted and timed, anything else is counted as an error by kind."""

from __future__ import annotations

from bench.load import classify_target, get_target, measure, sample_jpeg

from .server import AUTH, free_port


def test_counts_and_times_the_200s(server):
    images = [sample_jpeg(seed, size=64) for seed in range(2)]  # the server allows 2 images of 10,000 px
    result = measure(classify_target(server.url, images, ["cat", "dog"], AUTH), concurrency=2, duration=2.0, warmup=0.2)
    assert result["errors"] == 0 and result["warmup_errors"] == 0, result
    assert result["requests"] > 0 and result["images_per_s"] == 2 * result["requests_per_s"]
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert result["path"] == "/classify" and result["concurrency"] == 2 and result["processes"] == 1


def test_counts_every_other_answer_as_an_error(server):
    unauthorised = measure(
        classify_target(server.url, [sample_jpeg(size=64)], ["cat"]), concurrency=2, duration=1.0, warmup=0.1
    )
    assert unauthorised["requests"] == 0 and unauthorised["p50_ms"] is None
    assert unauthorised["errors"] > 0 and unauthorised["error_kinds"] == {"401": unauthorised["errors"]}
    refused = measure(get_target(f"http://127.0.0.1:{free_port()}"), concurrency=1, duration=1.0, warmup=0)
    assert refused["requests"] == 0 and set(refused["error_kinds"]) == {"ConnectError"}
