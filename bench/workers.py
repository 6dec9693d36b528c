"""CLIP_WORKERS=1 against CLIP_WORKERS=2 (or any counts) on this machine: throughput, latency and
memory. Both servers run at once (the idle one costs no CPU) and each load cell is run on one, then
at once on the other, round after round, so the noise of a shared machine falls on both alike; the
summary is the median over the rounds. Then each server's processes: RSS, PSS (shared pages split
between the processes that map them) and anonymous memory, after the load.

    python bench/workers.py                              # the bundled checkpoint, 3 rounds of 5 s cells
    python bench/workers.py --workers 1 2 --concurrency 8 32 --rounds 5 --json results.json

Load from wrk where installed (bench/serve.py's), else bench/load.py; every answer must be 2xx.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.settings import DEFAULT_CHECKPOINT  # noqa: E402
from bench.load import classify_target, sample_jpeg  # noqa: E402
from bench.serve import run_python_load, run_wrk, sample_png, wait_until_idle  # noqa: E402
from tests.app.server import Server  # noqa: E402  (the tests' launcher: the real clip-serve)


def load_cell(server: Server, images: list[bytes], concurrency: int, duration: float) -> dict:
    if shutil.which("wrk") is None:
        return run_python_load(server.url, images, concurrency, duration)
    target = classify_target(server.url, images)
    content_type = dict(target.headers)["content-type"]
    run_wrk(server.url, target.content, content_type, concurrency, 1.0)  # warm-up
    figures = run_wrk(server.url, target.content, content_type, concurrency, duration)
    wait_until_idle(server)
    return figures


def memory_mib(pid: int) -> dict:
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    return {
        key.lower(): int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) / 1024
        for key in ("Rss", "Pss", "Anonymous")
    }


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (the workers, and multiprocessing's resource tracker)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return [pid, *children]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds of load per cell")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    pictures = {"64 px PNG": sample_png(), "640x480 JPEG": sample_jpeg(size=(640, 480))}
    servers = {n: Server(args.checkpoint, max_queue=1024, log_level="warning", workers=n) for n in args.workers}
    cells: list[dict] = []
    try:
        for server in servers.values():
            server.wait_ready()
        for round_number in range(1, args.rounds + 1):
            for picture, data in pictures.items():
                for concurrency in args.concurrency:
                    for workers, server in servers.items():
                        figures = load_cell(server, [data], concurrency, args.duration)
                        figures.update(round=round_number, picture=picture, concurrency=concurrency, workers=workers)
                        cells.append(figures)
                        print(
                            f"round {round_number} {picture:13s} c={concurrency:<3d} workers={workers}: "
                            f"{figures['requests_per_s']:6.1f} req/s  p50 {figures['p50_ms']:7.1f} ms  "
                            f"p99 {figures['p99_ms']:7.1f} ms  errors {figures['errors']}",
                            flush=True,
                        )
        memory = {n: {pid: memory_mib(pid) for pid in process_tree(s.process.pid)} for n, s in servers.items()}
    finally:
        for server in servers.values():
            server.finish()
    print("\nmedian over the rounds (req/s, p50 ms, p99 ms)")
    for picture in pictures:
        for concurrency in args.concurrency:
            row = []
            for workers in args.workers:
                mine = [
                    c
                    for c in cells
                    if (c["picture"], c["concurrency"], c["workers"]) == (picture, concurrency, workers)
                ]
                median = {
                    key: statistics.median(c[key] for c in mine) for key in ("requests_per_s", "p50_ms", "p99_ms")
                }
                row.append(
                    f"workers={workers} {median['requests_per_s']:6.1f} / {median['p50_ms']:6.0f} / {median['p99_ms']:6.0f}"
                )
            print(f"{picture:13s} c={concurrency:<3d} " + "   ".join(row))
    print("\nmemory after the load (MiB; the first process is clip-serve itself)")
    for workers, processes in memory.items():
        for pid, figures in processes.items():
            print(
                f"workers={workers} pid {pid:7d}: RSS {figures['rss']:6.0f}  PSS {figures['pss']:6.0f}  "
                f"anonymous {figures['anonymous']:6.0f}"
            )
    if args.json:
        args.json.write_text(json.dumps({"cells": cells, "memory": memory}, indent=2))


if __name__ == "__main__":
    main()
