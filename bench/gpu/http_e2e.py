"""Step 6 of the GPU command: HTTP end to end. A real clip-serve on loopback (a ViT-B/16-size random
checkpoint, CUDA, dtype auto) under closed-loop load from bench/load.py: concurrency 1, 16 and 64,
with 1 and 8 images per POST /classify (224 px JPEGs, 10 labels whose embeddings are cached after
the first request). Per cell: requests/s, images/s, p50/p99 latency, errors (every answer must be
200) and the server's mean batch size over the measured window (from /metrics). Last, the client's
own ceiling: GET /healthz at the top concurrency, spread over the client processes and in one.

    python3 bench/gpu/http_e2e.py --result http.json             # on the GPU host, under a minute
    python3 bench/gpu/http_e2e.py --result http.json --dry-run   # tiny checkpoint on the CPU, seconds

Not named http.py: a step's folder comes first on sys.path, and a file called http.py there would
stand in for the standard library's http package (which torch and httpx import) in every step.
"""

from __future__ import annotations

import re
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import common
import httpx

from bench.load import Load, Target, classify_target, client_pool, get_target, sample_jpeg, start_load
from tests.app.server import Server


@dataclass(frozen=True)
class Plan:
    concurrencies: tuple[int, ...]
    images: tuple[int, ...]  # per request
    duration: float  # seconds measured per cell
    warmup: float  # seconds of load before each window
    processes: int  # client processes, at most


REAL = Plan(concurrencies=(1, 16, 64), images=(1, 8), duration=2.5, warmup=0.75, processes=4)
DRY = Plan(concurrencies=(1, 4), images=(1, 2), duration=1.0, warmup=0.3, processes=2)
IMAGE_SIZE = 224
LOG_TAIL = 4000  # characters of the server's output kept on failure


def server_settings(plan: Plan, device: str) -> dict:
    """CLIP_* settings: room for every image in flight; warnings only (the output is a pipe read at the end)."""
    return dict(
        device=device, dtype="auto", max_queue=2 * max(plan.concurrencies) * max(plan.images), log_level="warning"
    )


def batch_counters(url: str) -> tuple[float, float]:
    """(clip_batch_size_sum, clip_batch_size_count) from one GET /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text

    def value(name: str) -> float:
        match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    return value("clip_batch_size_sum"), value("clip_batch_size_count")


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def probe(target: Target, labels: list[str]) -> None:
    """One request before the load: it must answer 200 with a result per image (and caches the labels)."""
    response = httpx.request(
        target.method, target.url, content=target.content, headers=dict(target.headers), timeout=120
    )
    if response.status_code != 200:
        raise RuntimeError(f"probe {target.url} answered {response.status_code}: {response.text[:500]}")
    results = response.json()["results"]
    if len(results) != target.images or len(results[0]["scores"]) != len(labels):
        raise RuntimeError(f"probe {target.url}: unexpected answer {response.text[:500]}")


def run_cell(pool, url: str, target: Target, concurrency: int, plan: Plan) -> dict:
    """One closed-loop run, with the server's batch counters read at the window's start and end."""
    load: Load = start_load(
        pool, target, concurrency, plan.duration, plan.warmup, processes=min(concurrency, plan.processes)
    )
    sleep_until(load.start)
    sum_before, count_before = batch_counters(url)
    sleep_until(load.end)
    sum_after, count_after = batch_counters(url)
    cell = load.result()
    batches = count_after - count_before
    cell["mean_batch"] = (sum_after - sum_before) / batches if batches else None
    return cell


def describe(cell: dict) -> str:
    latency = f"p50 {cell['p50_ms']:.1f} ms p99 {cell['p99_ms']:.1f} ms" if cell["requests"] else "no 200s"
    batch = f", mean batch {cell['mean_batch']:.1f}" if cell.get("mean_batch") else ""
    return (
        f"{cell['path']} c={cell['concurrency']} x{cell['images_per_request']}: "
        f"{cell['requests_per_s']:.1f} req/s {cell['images_per_s']:.1f} img/s {latency}, "
        f"{cell['errors']} errors{batch}, client cpu {cell['client_cpu']:.2f}"
    )


def measure_all(pool, server: Server, plan: Plan, results: common.Results) -> None:
    images = [sample_jpeg(seed, IMAGE_SIZE) for seed in range(max(plan.images))]
    targets = {count: classify_target(server.url, images[:count], common.LABELS) for count in plan.images}
    for target in targets.values():
        probe(target, common.LABELS)
    cells = []
    for concurrency in plan.concurrencies:
        for count in plan.images:
            cells.append(run_cell(pool, server.url, targets[count], concurrency, plan))
            results["cells"] = cells  # recorded as soon as measured
            common.log(describe(cells[-1]))
    ceiling = []
    top = max(plan.concurrencies)
    for processes in sorted({plan.processes, 1}, reverse=True):
        ceiling.append(
            start_load(
                pool, get_target(server.url, "/healthz"), top, plan.duration, plan.warmup, processes=processes
            ).result()
        )
        results["client_ceiling"] = ceiling
        common.log(f"ceiling ({processes} client processes): {describe(ceiling[-1])}")


def stop_on_sigterm() -> None:
    """A step stopped at its cap with SIGTERM still runs its finally blocks (and stops the server)."""

    def stop(signum, frame):
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)


def main() -> None:
    args = common.step_arguments(__doc__).parse_args()
    stop_on_sigterm()
    plan = DRY if args.dry_run else REAL
    results = common.Results(args.result)
    setting = common.setting(args.dry_run)
    settings = server_settings(plan, setting.device)
    results["setting"] = {
        "device": setting.device,
        "dry_run": args.dry_run,
        "server": settings,
        "image": f"{IMAGE_SIZE}x{IMAGE_SIZE} JPEG",
        "labels": len(common.LABELS),
        "duration_s": plan.duration,
        "warmup_s": plan.warmup,
        "client_processes": plan.processes,
    }
    with tempfile.TemporaryDirectory(prefix="bench-http-") as directory:
        checkpoint = common.random_checkpoint(Path(directory), setting.shape)
        common.log(f"checkpoint written; starting clip-serve on {setting.device}")
        started = time.perf_counter()
        server = Server(checkpoint, **settings)
        failed = True
        try:
            with client_pool(plan.processes) as pool:  # the client processes start while the server loads
                server.wait_ready()
                results["server_start_s"] = time.perf_counter() - started
                common.log(f"server ready in {results.data['server_start_s']:.1f} s")
                measure_all(pool, server, plan, results)
            failed = False
        except BaseException as error:
            results["error"] = f"{type(error).__name__}: {error}"[:2000]
            raise
        finally:
            output = server.finish()
            if failed:
                results["server_log_tail"] = output[-LOG_TAIL:]


if __name__ == "__main__":
    main()
