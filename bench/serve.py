"""The real server against its own ceiling, in one run. The ceiling is the image tower the server
runs (same checkpoint, dtype and threads), in this process before the server starts: batch-1
latency and batch-32 images/s. Then `clip-serve` on loopback, loaded for each cell of concurrency
1, 8 and 32, a 64 px PNG and a 640x480 JPEG, 1 and 8 images per request, 10 labels (cached after
the first request): requests/s, images/s, p50/p99 and the ratio to the ceiling.

    python bench/serve.py                        # the bundled checkpoint, 8 s a cell
    python bench/serve.py --checkpoint DIR --duration 4 --json results.json
    python bench/serve.py --workers 2            # CLIP_WORKERS=2: two server processes on the port
    python bench/serve.py --compile auto         # CLIP_COMPILE=auto, for the server and its ceiling
    python bench/serve.py --concurrency 8 --images 1 --duration 2   # fewer cells

While each cell is measured, py-spy samples the server and bench/cpu_profile.py splits the server's
CPU time (the kernel's count, per thread) among protocol, multipart, decode, model, serialisation
and other; a table of the shares closes the run (--no-profile leaves it out).

The load generator is wrk (Debian's, a Lua script posting the request's bytes) where installed:
it is C and does not compete with the server for Python's GIL; elsewhere (a GPU host) bench/load.py,
in Python, over two processes. Every answer must be 2xx: the non-2xx and socket errors are counted.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.compiling import prepare_tower  # noqa: E402
from app.engine import ZeroShotEngine  # noqa: E402
from app.settings import DEFAULT_CHECKPOINT  # noqa: E402
from bench.cpu_profile import PARTS, CpuProfile  # noqa: E402
from bench.load import classify_target, measure, sample_jpeg  # noqa: E402
from tests.app.server import Server  # noqa: E402  (the tests' launcher: the real clip-serve)

CONCURRENCY = (1, 8, 32)
IMAGES_PER_REQUEST = (1, 8)
WRK_SCRIPT = """
local file = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")
"""


def sample_png(side: int = 64) -> bytes:
    """A drawing-like PNG: flat colours, an alpha channel, as the emoji the bundled model knows."""
    image = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    image.paste((230, 160, 40, 255), (side // 8, side // 8, side * 7 // 8, side * 7 // 8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def ceiling(checkpoint: Path, compile: str = "off", max_batch: int = 32, iterations: int = 20) -> dict:
    """The server's tower alone (ZeroShotEngine.encode_images on ready uint8 input), one process,
    compiled as the server's is (CLIP_COMPILE)."""
    engine = ZeroShotEngine(checkpoint, device="cpu")
    prepare_tower(engine, compile, max_batch)
    size = engine.config.vision.image_size
    figures = {}
    for batch in (1, 32):
        pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
        for _ in range(3):
            engine.encode_images(pixels)
        timings = []
        for _ in range(iterations):
            started = time.perf_counter()
            engine.encode_images(pixels)
            timings.append(time.perf_counter() - started)
        figures[f"batch_{batch}"] = {
            "ms": 1000 * statistics.median(timings),
            "images_per_s": batch / statistics.median(timings),
        }
    figures["compiled_batch_sizes"] = engine.compiled_batch_sizes
    return figures


def run_wrk(url: str, body: bytes, content_type: str, concurrency: int, duration: float) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "body").write_bytes(body)
        (Path(scratch) / "post.lua").write_text(WRK_SCRIPT)
        output = subprocess.run(
            [
                "wrk",
                "-t",
                str(min(concurrency, 2)),
                "-c",
                str(concurrency),
                "-d",
                f"{max(1, round(duration))}s",
                "--timeout",
                "30s",
                "--latency",
                "-s",
                str(Path(scratch) / "post.lua"),
                f"{url}/classify",
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "BENCH_BODY": str(Path(scratch) / "body"), "BENCH_CONTENT_TYPE": content_type},
        ).stdout
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50_ms": _wrk_ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1)),
        "p99_ms": _wrk_ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1)),
        "errors": sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
        + sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output)),
    }


def _wrk_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_python_load(url: str, images: list[bytes], concurrency: int, duration: float) -> dict:
    result = measure(classify_target(url, images), concurrency, duration, warmup=1.0, processes=2)
    return {
        "requests_per_s": result["requests_per_s"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "errors": result["errors"] + result["warmup_errors"],
    }


def wait_until_idle(server: Server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while server.metric("clip_queued_images") > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # the batch in flight when the queue emptied


def main() -> None:
    args = parse_args()
    wrk = shutil.which("wrk") is not None
    tower = ceiling(args.checkpoint, args.compile)
    print(
        f"checkpoint {args.checkpoint}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load from {'wrk' if wrk else 'bench/load.py'}; {args.duration:g} s a cell; "
        f"server: {args.workers} worker(s), CLIP_COMPILE={args.compile}"
    )
    print(
        f"ceiling (the tower alone; compiled for batch sizes {tower['compiled_batch_sizes'] or 'none'}): "
        f"batch 1 {tower['batch_1']['ms']:.1f} ms, batch 32 {tower['batch_32']['images_per_s']:.0f} images/s"
    )
    pictures = {"64 px PNG": sample_png(), "640x480 JPEG": sample_jpeg(size=(640, 480))}
    server = Server(args.checkpoint, max_queue=1024, log_level="warning", workers=args.workers, compile=args.compile)
    cells = []
    try:
        server.wait_ready()  # inside: a server that never gets ready is stopped too
        for picture, data in pictures.items():
            for count in args.images:
                for concurrency in args.concurrency:
                    figures = measure_cell(server, [data] * count, concurrency, args.duration, wrk, args.profile)
                    figures.update(picture=picture, images=count, concurrency=concurrency)
                    figures["images_per_s"] = figures["requests_per_s"] * count
                    figures["of_ceiling"] = figures["images_per_s"] / tower["batch_32"]["images_per_s"]
                    figures["p50_over_batch_1"] = figures["p50_ms"] / tower["batch_1"]["ms"]
                    cells.append(figures)
                    wait_until_idle(server)  # requests wrk left queued must not slow the next cell
                    print(
                        f"{picture:13s} x{count} c={concurrency:<3d} {figures['requests_per_s']:7.1f} req/s "
                        f"{figures['images_per_s']:7.1f} img/s ({figures['of_ceiling']:.2f} of ceiling)  "
                        f"p50 {figures['p50_ms']:7.1f} ms ({figures['p50_over_batch_1']:.1f}x batch 1)  "
                        f"p99 {figures['p99_ms']:7.1f} ms  errors {figures['errors']}",
                        flush=True,
                    )
    finally:
        server.finish()
    if args.profile:
        print_profiles(cells)
    if args.json:
        summary = {"checkpoint": str(args.checkpoint), "workers": args.workers, "compile": args.compile}
        args.json.write_text(json.dumps({**summary, "ceiling": tower, "cells": cells}, indent=2))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--duration", type=int, default=8, help="seconds of load per cell")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--workers", type=int, default=1, help="CLIP_WORKERS of the server (default 1)")
    parser.add_argument(
        "--compile", choices=("off", "auto", "on"), default="off", help="CLIP_COMPILE of the server and its ceiling"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=CONCURRENCY, help="default: 1 8 32")
    parser.add_argument("--images", type=int, nargs="+", default=IMAGES_PER_REQUEST, help="per request; default: 1 8")
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sample the server with py-spy during each cell and print where its CPU time went (default: on)",
    )
    return parser.parse_args()


def measure_cell(server: Server, images: list[bytes], concurrency: int, seconds: int, wrk: bool, profile: bool) -> dict:
    """One cell's load (after a second of warm-up, once the server's queue is empty again) and, with
    ``profile``, the server's CPU profile over it."""
    target = classify_target(server.url, images)
    content_type = dict(target.headers)["content-type"]
    if wrk:
        run_wrk(server.url, target.content, content_type, concurrency, 1.0)  # warm-up
        # the requests wrk left in flight are still queued: measured behind them, a cell of 32
        # connections with 8 images each lost half of its 8 s to the warm-up's work
        wait_until_idle(server)
    queued_at_start = server.metric("clip_queued_images")
    with CpuProfile(server.process.pid, seconds) if profile else nullcontext() as cpu:
        if wrk:
            figures = run_wrk(server.url, target.content, content_type, concurrency, seconds)
        else:  # its one second of warm-up falls inside the profile
            figures = run_python_load(server.url, images, concurrency, seconds)
    figures["queued_at_start"] = queued_at_start
    if cpu is not None:
        figures["profile"] = cpu.result
        if cpu.problem:
            print(f"no CPU profile: {cpu.problem}", file=sys.stderr)
    return figures


def print_profiles(cells: list[dict]) -> None:
    """Where the server's CPU time went in each cell: shares of its CPU seconds, and how many cores."""
    print("\nwhere the server's CPU time went (py-spy samples, weighted by each thread's CPU time):")
    print(f"{'image':13s} {'imgs':>4s} {'c':>3s} {'cores':>5s} " + " ".join(f"{part:>13s}" for part in PARTS))
    for cell in cells:
        profile = cell.get("profile")
        shares = (
            " ".join(f"{profile['shares'][part]:13.0%}" for part in PARTS) if profile else "(no profile: see above)"
        )
        cores = f"{profile['cores']:5.2f}" if profile else "    -"
        print(f"{cell['picture']:13s} {cell['images']:4d} {cell['concurrency']:3d} {cores} {shares}")


if __name__ == "__main__":
    main()
