"""Closed-loop HTTP load generator: C workers, each sending the same request back to back over
keep-alive connections (HTTP/1.1, a pool of C connections) for a fixed time after a warm-up.

    python bench/load.py http://127.0.0.1:8000 --concurrency 16 --images 1 --duration 5
    python bench/load.py http://127.0.0.1:8000 --concurrency 64 --images 8 --processes 4
    python bench/load.py http://127.0.0.1:8000 --path /healthz --concurrency 64   # the client's own ceiling

Prints one JSON object: requests/s and images/s (200 answers completed in the window), p50/p99
latency, errors by kind, and the client's CPU use. Every answer must be 200: anything else (a status,
a timeout, a dropped connection) is an error, counted by kind, never dropped.

One Python process driving dozens of connections runs out of CPU before a fast server does, so the
workers can be spread over several processes (--processes), which measure the same wall-clock window
and are summed; ``client_cpu`` near 1.0 (one core busy in a client process) says the client, not the
server, set the pace. Needs httpx; uses uvloop when installed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
from PIL import Image

LABELS = ["a cat", "a dog", "a pizza", "a car", "a house", "a tree", "a rocket", "an apple", "a ball", "a book"]
TIMEOUT = 30.0  # seconds per request; a request past it is an error (ReadTimeout, ...)
LEAD = 0.2  # seconds for a started pool to pick the work up, before the warm-up begins


@dataclass(frozen=True)
class Target:
    """One request, encoded once and sent as is by every worker."""

    method: str
    url: str
    content: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    images: int = 0  # images per request, for images/s


def classify_target(
    base_url: str, images: list[bytes], labels: list[str] = LABELS, headers: dict[str, str] | None = None
) -> Target:
    """POST /classify: multipart, one ``images`` part per image and one ``labels`` field per label."""
    files = [("images", (f"{index}.jpg", data, "image/jpeg")) for index, data in enumerate(images)]
    request = httpx.Request("POST", f"{base_url}/classify", files=files, data={"labels": labels})
    content = request.read()
    sent = {"content-type": request.headers["content-type"], **(headers or {})}
    return Target("POST", str(request.url), content, tuple(sent.items()), len(images))


def get_target(base_url: str, path: str = "/healthz", headers: dict[str, str] | None = None) -> Target:
    return Target("GET", f"{base_url}{path}", headers=tuple((headers or {}).items()))


def sample_jpeg(seed: int = 0, size: int | tuple[int, int] = 224, quality: int = 90) -> bytes:
    """A photo-like JPEG (gradients under noise, some 20-30 KB at 224 px), so decoding costs what a
    photo does. ``size``: a side, or (width, height)."""
    size = (size, size) if isinstance(size, int) else size
    gradient = Image.linear_gradient("L").rotate(seed * 37 % 360).resize(size)
    rings = Image.radial_gradient("L").resize(size)
    noise = Image.effect_noise(size, 48 + seed % 16)
    buffer = io.BytesIO()
    Image.merge("RGB", (gradient, rings, noise)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@dataclass
class Tally:
    """What one process measured in the window [start, end) (wall clock, shared by the processes)."""

    latencies: list[float] = field(default_factory=list)  # seconds, of the 200s completed in the window
    errors: Counter = field(default_factory=Counter)  # kind -> count, completed in the window
    warmup_errors: Counter = field(default_factory=Counter)  # the same, before the window
    cpu_seconds: float = 0.0  # this process's CPU time over the window
    late_s: float = 0.0  # how late its workers began (0: during the warm-up)


async def closed_loop(target: Target, concurrency: int, start: float, end: float, timeout: float = TIMEOUT) -> Tally:
    """``concurrency`` workers sending ``target`` back to back until ``end``; counts what completes in [start, end)."""
    tally = Tally()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = dict(target.headers)
    content = target.content or None

    async def worker(client: httpx.AsyncClient) -> None:
        while time.time() < end:
            began = time.perf_counter()
            try:
                response = await client.request(target.method, target.url, content=content, headers=headers)
                kind = None if response.status_code == 200 else str(response.status_code)
            except httpx.HTTPError as error:  # timeouts, refused or dropped connections, protocol errors
                kind = type(error).__name__
            latency, done = time.perf_counter() - began, time.time()
            if done >= end:
                return
            if done < start:
                if kind:
                    tally.warmup_errors[kind] += 1
            elif kind:
                tally.errors[kind] += 1
            else:
                tally.latencies.append(latency)

    async def cpu_over_window() -> None:
        await asyncio.sleep(max(0.0, start - time.time()))
        used = time.process_time()
        await asyncio.sleep(max(0.0, end - time.time()))
        tally.cpu_seconds = time.process_time() - used

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        tally.late_s = max(0.0, time.time() - start)  # a client takes a while to make (its TLS context)
        await asyncio.gather(cpu_over_window(), *(worker(client) for _ in range(concurrency)))
    return tally


def run_closed_loop(target: Target, concurrency: int, start: float, end: float, timeout: float = TIMEOUT) -> Tally:
    """closed_loop on an event loop of its own (uvloop when installed): what a pool process runs."""
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(closed_loop(target, concurrency, start, end, timeout))


def _ready() -> int:
    time.sleep(0.05)  # long enough that each priming call lands on a process of its own
    return os.getpid()


@contextmanager
def client_pool(processes: int) -> Iterator[ProcessPoolExecutor]:
    """``processes`` started (spawned, so safe beside torch or CUDA in the parent) client processes."""
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
    try:
        for started in [pool.submit(_ready) for _ in range(processes)]:
            started.result()
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def split(concurrency: int, processes: int) -> list[int]:
    """Workers per process, as even as can be, none empty."""
    processes = max(1, min(processes, concurrency))
    return [concurrency // processes + (index < concurrency % processes) for index in range(processes)]


@dataclass
class Load:
    """A run under way in a pool: its window is [start, end) in time.time() seconds."""

    target: Target
    concurrency: int
    start: float
    end: float
    tallies: list[Future]

    def result(self) -> dict:
        return summarise(
            self.target, self.concurrency, self.end - self.start, [tally.result() for tally in self.tallies]
        )


def start_load(
    pool: ProcessPoolExecutor,
    target: Target,
    concurrency: int,
    duration: float,
    warmup: float,
    processes: int = 1,
    timeout: float = TIMEOUT,
) -> Load:
    """Starts ``concurrency`` workers spread over ``processes`` of ``pool`` and returns at once."""
    start = time.time() + LEAD + warmup
    end = start + duration
    tallies = [
        pool.submit(run_closed_loop, target, workers, start, end, timeout) for workers in split(concurrency, processes)
    ]
    return Load(target, concurrency, start, end, tallies)


def measure(
    target: Target, concurrency: int, duration: float, warmup: float = 1.0, processes: int = 1, timeout: float = TIMEOUT
) -> dict:
    """One closed-loop run: in this process when ``processes`` is 1, else in a pool started for it."""
    if processes <= 1:
        start = time.time() + warmup
        return summarise(
            target, concurrency, duration, [run_closed_loop(target, concurrency, start, start + duration, timeout)]
        )
    with client_pool(min(processes, concurrency)) as pool:
        return start_load(pool, target, concurrency, duration, warmup, processes, timeout).result()


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def summarise(target: Target, concurrency: int, seconds: float, tallies: list[Tally]) -> dict:
    latencies = sorted(latency for tally in tallies for latency in tally.latencies)
    errors = sum((tally.errors for tally in tallies), Counter())
    warmup_errors = sum((tally.warmup_errors for tally in tallies), Counter())
    requests = len(latencies)
    return {
        "path": httpx.URL(target.url).path,
        "concurrency": concurrency,
        "images_per_request": target.images,
        "processes": len(tallies),
        "seconds": round(seconds, 3),
        "requests": requests,
        "requests_per_s": requests / seconds,
        "images_per_s": requests * target.images / seconds,
        "p50_ms": 1000 * percentile(latencies, 0.5) if latencies else None,
        "p99_ms": 1000 * percentile(latencies, 0.99) if latencies else None,
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "warmup_errors": sum(warmup_errors.values()),
        "warmup_error_kinds": dict(warmup_errors),
        # CPU seconds per second of the busiest client process: near 1.0, the client set the pace
        "client_cpu": max(tally.cpu_seconds for tally in tallies) / seconds,
        "client_late_s": max(tally.late_s for tally in tallies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--path", default="/classify", help="/classify (multipart POST) or any GET route")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--images", type=int, default=1, help="images per /classify request")
    parser.add_argument("--image-size", type=int, default=224, help="sides of the JPEGs sent, in pixels")
    parser.add_argument("--label", action="append", dest="labels", help="a label (repeat); default: 10 of them")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before the measured window")
    parser.add_argument("--processes", type=int, default=1, help="client processes the workers are spread over")
    parser.add_argument("--api-key", help="sent as 'Authorization: Bearer <key>'")
    args = parser.parse_args()
    url = args.url.rstrip("/")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    if args.path == "/classify":
        images = [sample_jpeg(seed, args.image_size) for seed in range(args.images)]
        target = classify_target(url, images, args.labels or LABELS, headers)
    else:
        target = get_target(url, args.path, headers)
    print(json.dumps(measure(target, args.concurrency, args.duration, args.warmup, args.processes), indent=2))


if __name__ == "__main__":
    main()
