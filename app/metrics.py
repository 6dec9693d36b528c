"""Prometheus collectors, in one registry of their own (served at GET /metrics).

Under several workers (CLIP_WORKERS, app/workers.py) clip-serve sets PROMETHEUS_MULTIPROC_DIR before
any worker imports this module: prometheus-client then keeps each value in a file per process, and
/metrics adds up every worker's files (counters and histograms summed, clip_queued_images summed over
the live workers). The names are the same either way.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

# prometheus-client chooses its value storage on import by the same variable, so decide here, once
MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ

REGISTRY = CollectorRegistry()

REQUESTS = Counter(
    "clip_requests_total", "HTTP requests answered, by route and status", ["route", "status"], registry=REGISTRY
)
ERRORS = Counter(
    "clip_request_errors_total",
    "HTTP requests answered with a 4xx or 5xx, by route, status and error code",
    ["route", "status", "code"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "clip_request_duration_seconds",
    "time from request to response, by route",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "clip_queue_wait_seconds",
    "time an image waited for its batch to start",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "clip_batch_size", "images per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=REGISTRY
)
QUEUED = Gauge("clip_queued_images", "images waiting for a batch", multiprocess_mode="livesum", registry=REGISTRY)
IMAGES = Counter("clip_images_classified_total", "images classified", registry=REGISTRY)
CACHE_HITS = Counter("clip_label_cache_hits_total", "label embeddings found in the cache", registry=REGISTRY)
CACHE_MISSES = Counter("clip_label_cache_misses_total", "label embeddings computed", registry=REGISTRY)


def observe_batch(size: int, waits: list[float]) -> None:
    BATCH_SIZE.observe(size)
    for wait in waits:
        QUEUE_WAIT.observe(wait)


def observe_cache(hits: int, misses: int) -> None:
    CACHE_HITS.inc(hits)
    CACHE_MISSES.inc(misses)


def render() -> bytes:
    if not MULTIPROCESS:
        return generate_latest(REGISTRY)
    every_worker = CollectorRegistry()
    multiprocess.MultiProcessCollector(every_worker)
    return generate_latest(every_worker)
