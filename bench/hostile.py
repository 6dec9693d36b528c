"""The hostile-input cases of issue 13, replayed against a real `clip-serve`: what each costs the
server (its answer, its time, the server's memory) and what it costs everyone else (the latency of
a small well-behaved request sent back to back from another connection while the attack runs).

    python bench/hostile.py                          # the bundled checkpoint, default settings
    python bench/hostile.py --checkpoint DIR --json hostile.json

Each case prints: the attack's status codes and wall time, the server's resident memory before it
and at its peak during it (sampled every 20 ms from /proc), and the small request's p50 and worst
latency during the attack against its p50 before any attack. Nothing here is asserted: the tests
pin the behaviour (tests/app/test_limits.py, test_errors.py); this measures it.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.settings import DEFAULT_CHECKPOINT  # noqa: E402
from bench.load import LABELS  # noqa: E402
from bench.serve import sample_png  # noqa: E402
from tests.app.server import Server  # noqa: E402  (the tests' launcher: the real clip-serve)

TIMEOUT = 120.0


def png(width: int, height: int, mode: str = "L") -> bytes:
    image = Image.new(mode, (width, height), 128)
    image.paste(255 if mode == "L" else (200, 40, 40), (0, 0, max(1, width // 3), max(1, height // 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(images: list[bytes], labels: list[str] = LABELS, templates: list[str] = ()) -> dict:
    files = [("images", (f"{index}.png", data, "image/png")) for index, data in enumerate(images)]
    data: dict[str, list[str]] = {"labels": labels}
    if templates:
        data["template"] = list(templates)
    return {"files": files, "data": data}


class MemorySampler(threading.Thread):
    """The server's resident set size, sampled from /proc; ``peak_since`` reads the highest value."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.path = Path(f"/proc/{pid}/status")
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def rss(self) -> int:
        for line in self.path.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.rss()))
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.02)

    def peak_since(self, start: float) -> int:
        return max((rss for at, rss in self.samples if at >= start), default=0)


class Bystander(threading.Thread):
    """A well-behaved client: one small PNG and ten labels, back to back on its own connection."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.latencies: list[tuple[float, float, int]] = []  # (sent at, seconds, status)
        self.stop = threading.Event()

    def run(self) -> None:
        request = multipart([sample_png()])
        with httpx.Client(timeout=TIMEOUT) as client:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    status = client.post(f"{self.url}/classify", **request).status_code
                except httpx.HTTPError:
                    status = 0
                self.latencies.append((sent, time.monotonic() - sent, status))

    def during(self, start: float, end: float) -> list[float]:
        """Latencies of the requests that overlapped the window (a request stuck through it counts)."""
        return [seconds for sent, seconds, _ in self.latencies if sent <= end and sent + seconds >= start]


@dataclass
class Case:
    name: str
    attack: Callable[[str], list[int]]  # base url -> the attack's status codes
    expect: str
    figures: dict = field(default_factory=dict)


def post_many(url: str, path: str, requests: list[dict], concurrency: int) -> list[int]:
    def one(request: dict) -> int:
        try:
            return httpx.post(f"{url}{path}", timeout=TIMEOUT, **request).status_code
        except httpx.HTTPError:
            return 0

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, requests))


def short_body(url: str) -> list[int]:
    """Content-Length promises 1,000 bytes, 10 arrive, then the client waits for the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(
            b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1000\r\n\r\n--b\r\nabcd"
        )
        answer = sock.recv(4096)
    return [int(answer.split()[1])] if answer else [0]


def unterminated_multipart(url: str) -> list[int]:
    part = b'--b\r\nContent-Disposition: form-data; name="labels"\r\n\r\n'
    body = part + b"cat\r\n" + part + b"dog"  # no final --b--
    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    return [httpx.post(f"{url}/classify", content=body, headers=headers, timeout=TIMEOUT).status_code]


def lone_surrogate(url: str) -> list[int]:
    """JSON may escape a lone surrogate (\\ud800); it is not text, so the label cannot be used."""
    image = base64.b64encode(sample_png()).decode()
    body = json.dumps({"images": [{"data": image}], "labels": ["\ud800", "a cat"]})  # ASCII, the escape kept
    headers = {"Content-Type": "application/json"}
    return [httpx.post(f"{url}/classify/json", content=body, headers=headers, timeout=TIMEOUT).status_code]


def cases() -> list[Case]:
    sliver = png(1, 100_000)
    long_sliver = png(1, 1_000_000)
    big = png(6000, 6000, "RGB")
    return [
        Case(
            f"PNG of 1x100,000 pixels ({len(sliver)} B)",
            lambda url: post_many(url, "/classify", [multipart([sliver])], 1),
            "200, no upscaled intermediate",
        ),
        Case(
            f"2 requests x 4 PNGs of 1x1,000,000 pixels ({len(long_sliver)} B each)",
            lambda url: post_many(url, "/classify", [multipart([long_sliver] * 4)] * 2, 2),
            "200, no upscaled intermediate",
        ),
        Case(
            f"4 requests x 16 PNGs of 6000x6000 ({len(big) // 1024} KiB each)",
            lambda url: post_many(url, "/classify", [multipart([big] * 16)] * 4, 4),
            "bounded decode work per request; others not starved",
        ),
        Case(
            "a 1 MB template with 8 labels",
            lambda url: post_many(url, "/classify", [multipart([sample_png()], LABELS[:8], ["{} " + "x" * 2**20])], 1),
            "refused at once (a form part over 1 MiB: 400)",
        ),
        Case(
            "60 requests with different 3 MB templates",
            lambda url: post_many(
                url,
                "/classify",
                [multipart([sample_png()], LABELS[:2], [f"{{}} {i} " + "y" * 3 * 2**20]) for i in range(60)],
                4,
            ),
            "refused at once, no memory kept",
        ),
        Case(
            "8 texts of 1 MB to /embed/text",
            lambda url: post_many(url, "/embed/text", [{"json": {"texts": ["z" * 2**20] * 8}}], 1),
            "422 text_too_long, at once",
        ),
        Case("a body shorter than its Content-Length", short_body, "408 after CLIP_BODY_TIMEOUT_S (30 s)"),
        Case("a multipart body without its closing boundary", unterminated_multipart, "400 unterminated_multipart"),
        Case('a lone surrogate label ("\\ud800")', lone_surrogate, "422, not 500"),
    ]


def run_case(case: Case, server: Server, memory: MemorySampler, bystander: Bystander, baseline: float) -> None:
    time.sleep(1.0)  # let the last case's work drain
    before = memory.rss()
    start = time.monotonic()
    statuses = case.attack(server.url)
    end = time.monotonic()
    time.sleep(0.3)
    latencies = bystander.during(start, end) or [0.0]
    case.figures = {
        "statuses": dict(sorted({str(s): statuses.count(s) for s in set(statuses)}.items())),
        "seconds": round(end - start, 2),
        "rss_before_mb": round(before / 2**20),
        "rss_peak_mb": round(memory.peak_since(start) / 2**20),
        "rss_after_mb": round(memory.rss() / 2**20),
        "bystander_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "bystander_max_ms": round(max(latencies) * 1000, 1),
        "bystander_baseline_p50_ms": round(baseline * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    server = Server(args.checkpoint, log_level="warning").wait_ready()
    memory = MemorySampler(server.process.pid)
    bystander = Bystander(server.url)
    try:
        memory.start()
        bystander.start()
        while len(bystander.latencies) < 25:  # the first few embed the labels
            time.sleep(0.1)
        baseline = statistics.median(seconds for _, seconds, _ in bystander.latencies[5:])
        print(f"checkpoint {args.checkpoint}; a small request alone: p50 {baseline * 1000:.1f} ms")
        print(
            "| case | expected | answers | time | server memory (before / peak / after) | small request p50 / worst |"
        )
        print("|---|---|---|---:|---|---|")
        measured = cases()
        for case in measured:
            run_case(case, server, memory, bystander, baseline)
            f = case.figures
            print(
                f"| {case.name} | {case.expect} | {f['statuses']} | {f['seconds']} s | "
                f"{f['rss_before_mb']} / {f['rss_peak_mb']} / {f['rss_after_mb']} MB | "
                f"{f['bystander_p50_ms']} / {f['bystander_max_ms']} ms |",
                flush=True,
            )
        errors = [s for _, _, s in bystander.latencies if s != 200]
        print(f"small requests: {len(bystander.latencies)} sent, {len(errors)} not answered 200")
    finally:
        bystander.stop.set()
        memory.stop.set()
        bystander.join(TIMEOUT)
        server.finish()
    if args.json:
        args.json.write_text(json.dumps({c.name: {"expected": c.expect, **c.figures} for c in measured}, indent=2))


if __name__ == "__main__":
    main()
