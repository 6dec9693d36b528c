"""Benchmark the real server: concurrent clients posting one image each, with dynamic batching
on and with CLIP_MAX_BATCH=1, in one run. Prints images/s and p50/p95 latency for each, and their ratio.

    python bench/serve.py [--checkpoint DIR] [--clients 16] [--requests 200]

Without --checkpoint it makes a tiny checkpoint with the model library's save path. Loopback only.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.app.server import Server, image_bytes  # noqa: E402  (the tests' launcher: the real clip-serve)


def tiny_checkpoint(directory: Path) -> Path:
    from model.convert.minilm import package_dir
    from tests.conftest import make_checkpoint
    return make_checkpoint(directory, package_dir() / "vocab.txt")


def run(url: str, clients: int, requests: int, labels: list[str]) -> dict:
    images = [image_bytes((i * 37 % 256, i * 91 % 256, i * 53 % 256), size=(256, 192), format="JPEG")
              for i in range(clients)]

    def one(index: int) -> float:
        started = time.perf_counter()
        response = client.post(f"{url}/classify", files=[("images", (f"{index}.jpg", images[index % clients]))],
                               data={"labels": labels}, timeout=120)
        response.raise_for_status()
        return time.perf_counter() - started

    with httpx.Client(limits=httpx.Limits(max_connections=clients)) as client:
        for i in range(clients):  # warm the label cache and the connections
            one(i)
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            latencies = sorted(pool.map(one, range(requests)))
        elapsed = time.perf_counter() - started
    return {"images_per_s": requests / elapsed, "p50_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    args = parser.parse_args()
    checkpoint = args.checkpoint or tiny_checkpoint(Path(tempfile.mkdtemp(prefix="bench-ckpt-")))
    labels = ["cat", "dog", "pizza", "car", "tree"]
    results = {}
    for name, max_batch in (("batched", 32), ("max_batch=1", 1)):
        server = Server(checkpoint, max_batch=max_batch, batch_wait_ms=args.batch_wait_ms, max_queue=4096)
        try:
            server.wait_ready()
            results[name] = run(server.url, args.clients, args.requests, labels)
            batches = server.metric("clip_batch_size_count")
            results[name]["mean_batch"] = server.metric("clip_batch_size_sum") / batches
        finally:
            server.finish()
    print(f"checkpoint {checkpoint}, {args.clients} clients, {args.requests} requests of 1 image, "
          f"{len(labels)} labels, CLIP_BATCH_WAIT_MS={args.batch_wait_ms}")
    for name, r in results.items():
        print(f"{name:12s} {r['images_per_s']:8.1f} images/s  p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms"
              f"  mean batch {r['mean_batch']:.1f}")
    ratio = results["batched"]["images_per_s"] / results["max_batch=1"]["images_per_s"]
    print(f"throughput ratio batched / max_batch=1: {ratio:.2f}x")


if __name__ == "__main__":
    main()
