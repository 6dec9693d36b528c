"""Do big uploads stall small requests? A hostile load (BIG concurrent requests, each of IMAGES
PNGs of SIDE x SIDE pixels, under the byte limit) posted once, while one client sends a small
request (one 64 px PNG) after another until the big ones are answered: the small requests'
latencies (p50 / max), against the same small request on the idle server first.

    python bench/decode_fairness.py                          # this checkout's clip-serve
    python bench/decode_fairness.py --app-root /tmp/before   # another checkout's (git archive), same load
    python bench/decode_fairness.py --setting MAX_REQUEST_PIXELS=1000000000

The server is the real clip-serve (bundled checkpoint unless --checkpoint), on loopback, started
from --app-root; settings given as --setting NAME=value (CLIP_ prefix implied).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.app.server import START_TIMEOUT, free_port  # noqa: E402


def big_png(side: int, seed: int) -> bytes:
    """Gradients and stripes: cheap to send (it compresses well), full price to decode."""
    horizontal = Image.linear_gradient("L").resize((side, side))
    vertical = horizontal.rotate(90 + seed)
    stripes = Image.radial_gradient("L").resize((side, side))
    buffer = io.BytesIO()
    Image.merge("RGB", (horizontal, vertical, stripes)).save(buffer, format="PNG")
    return buffer.getvalue()


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def start_server(app_root: Path, checkpoint: str | None, settings: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLIP_")}
    env.update({"PYTHONPATH": str(app_root), "CLIP_HOST": "127.0.0.1", "CLIP_PORT": str(port)})
    if checkpoint:
        env["CLIP_CHECKPOINT"] = checkpoint
    env.update({f"CLIP_{name}": value for name, value in settings.items()})
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve"],
        cwd=app_root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not become ready")


def post(url: str, images: list[bytes]) -> tuple[int, float]:
    files = [("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    started = time.perf_counter()
    response = httpx.post(f"{url}/classify", files=files, data={"labels": ["cat", "dog"]}, timeout=600)
    return response.status_code, time.perf_counter() - started


def small_latencies(url: str, until: threading.Event, image: bytes, pause: float) -> list[tuple[int, float]]:
    answers = []
    while not until.is_set():
        answers.append(post(url, [image]))
        time.sleep(pause)
    return answers


def summary(answers: list[tuple[int, float]]) -> dict:
    seconds = sorted(elapsed for _, elapsed in answers)
    return {
        "count": len(seconds),
        "p50_ms": round(statistics.median(seconds) * 1000, 1) if seconds else None,
        "max_ms": round(seconds[-1] * 1000, 1) if seconds else None,
        "statuses": sorted({status for status, _ in answers}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app-root", type=Path, default=ROOT, help="checkout whose app/ and model/ serve")
    parser.add_argument("--checkpoint", help="default: the checkout's bundled checkpoint")
    parser.add_argument("--big", type=int, default=4, help="concurrent big requests")
    parser.add_argument("--images", type=int, default=16, help="images per big request")
    parser.add_argument("--side", type=int, default=6000, help="big images are SIDE x SIDE")
    parser.add_argument("--pause", type=float, default=0.1, help="seconds between small requests")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.setting)
    big = [big_png(args.side, seed) for seed in range(args.images)]
    small = small_png()
    print(f"big request: {args.images} x {len(big[0]) / 1e6:.2f} MB PNG, {args.side}x{args.side}", file=sys.stderr)

    process, url = start_server(args.app_root, args.checkpoint, settings)
    try:
        idle = [post(url, [small]) for _ in range(10)]
        done = threading.Event()
        with ThreadPoolExecutor(args.big + 1) as pool:
            small_future = pool.submit(small_latencies, url, done, small, args.pause)
            time.sleep(0.5)  # a few small requests before the load
            started = time.perf_counter()
            bigs = [pool.submit(post, url, big) for _ in range(args.big)]
            big_answers = [future.result() for future in bigs]
            load_seconds = time.perf_counter() - started
            done.set()
            under_load = small_future.result()
    finally:
        process.terminate()
        process.wait(60)
    result = {
        "app_root": str(args.app_root),
        "settings": settings,
        "big": {"requests": args.big, "images": args.images, "side": args.side, "png_bytes": len(big[0])},
        "big_answers": [{"status": status, "seconds": round(elapsed, 2)} for status, elapsed in big_answers],
        "load_seconds": round(load_seconds, 2),
        "small_idle": summary(idle),
        "small_under_load": summary(under_load),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
