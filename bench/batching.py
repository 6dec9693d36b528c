"""How much of a fast device does the service's own request path leave unused? On the CPU, in one run.

The service itself (app/service.py ZeroShotService: its DynamicBatcher, model thread, finisher,
label cache, logits and result rows) serves one-image requests of pre-decoded pixels, 4 x max
batch of them in flight, as bench/gpu/engine.py's `predecoded` does on a GPU. The one thing
replaced is the image tower: a stand-in device that takes COMPUTE ms a batch, in two kinds:

  async  a GPU running CUDA graphs as the host sees it: a batch's work is queued at once (the call
         returns ready embeddings), the device runs queued batches one after another, and waiting
         for a batch's results (the finisher's event) sleeps until the device is done with it;
  sync   a device whose every call returns only when its batch is done (time.sleep, the
         interpreter lock released all the while): the model thread waits inside each call.

What stands between the service and the device's ceiling (max batch / COMPUTE) is then the request
path alone: the event loop's work per request, the hand-overs between it, the model thread and the
finisher, and who waits for whom. Variants, interleaved over rounds (medians): each kind of device
with CLIP_BATCHES_IN_FLIGHT=1 and 2.

    python bench/batching.py                       # 3 ms a batch of 32: a 10,667 images/s device
    python bench/batching.py --compute-ms 1 --rounds 5 --json out.json

Not a measure of any GPU: of this host's CPU running the service's Python around one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "gpu"))  # the GPU command's steps import their siblings by name

from common import LABELS, TINY_SHAPE, Setting, random_checkpoint, time_calls  # noqa: E402
from engine import Pipeline, photo_like_jpegs  # noqa: E402

from app.service import ZeroShotService  # noqa: E402
from app.settings import Settings  # noqa: E402

VARIANTS = {  # name: (kind of stand-in device, batches in flight)
    "async_in_flight_1": ("async", 1),
    "async_in_flight_2": ("async", 2),
    "sync_in_flight_1": ("sync", 1),
    "sync_in_flight_2": ("sync", 2),
}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compute-ms", type=float, default=3.0, help="the stand-in device's time per batch")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4000, help="per timed run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    return parser.parse_args()


class StandInDevice:
    """Replaces engine.encode_images (and, for the async kind, engine.record_ready): the first
    len(pixels) of ``embeddings`` (ready ones, computed once by the real tower) after ``seconds`` a
    batch of the device's time."""

    def __init__(self, embeddings: torch.Tensor, seconds: float):
        self.embeddings, self.seconds = embeddings, seconds
        self.done_at = 0.0  # on time.perf_counter's clock, when the device finishes what is queued

    def queue(self, pixels: torch.Tensor) -> torch.Tensor:
        """async: the batch starts when the device is done with those queued before it; no waiting here."""
        self.done_at = max(time.perf_counter(), self.done_at) + self.seconds
        return self.embeddings[: len(pixels)]

    def record_ready(self) -> StandInEvent:
        return StandInEvent(self.done_at)

    def run(self, pixels: torch.Tensor) -> torch.Tensor:
        """sync: returns once the batch is done, the interpreter lock released meanwhile."""
        time.sleep(self.seconds)
        return self.embeddings[: len(pixels)]

    def attach(self, engine, kind: str) -> None:
        if kind == "async":
            engine.encode_images, engine.record_ready = self.queue, self.record_ready
        else:
            engine.encode_images, engine.record_ready = self.run, lambda: None


class StandInEvent:
    """torch.cuda.Event's synchronize for the async stand-in: sleeps until the device reaches it."""

    def __init__(self, done_at: float):
        self.done_at = done_at

    def synchronize(self) -> None:
        time.sleep(max(0.0, self.done_at - time.perf_counter()))


async def measure(args: argparse.Namespace, settings: Settings) -> dict:
    service = ZeroShotService(settings)
    service.start()
    engine = await service.wait_loaded()
    pixels = engine.decode_image(photo_like_jpegs(1, (64, 48))[0])
    await service.classify_pixels([pixels], LABELS, None)  # the labels are cached from here on
    device = StandInDevice(engine.encode_images(torch.stack([pixels] * args.max_batch)), args.compute_ms / 1000)
    pipeline = Pipeline(service, decoders=None, in_flight=4 * args.max_batch)
    assert service.batcher is not None
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    batches: dict[str, list[float]] = {name: [] for name in VARIANTS}
    try:
        for _ in range(args.rounds):
            for name, (kind, in_flight) in VARIANTS.items():
                device.attach(engine, kind)
                service.batcher.in_flight = in_flight
                await pipeline.run([pixels] * 300, "pixels")  # warm-up
                figures = await pipeline.run([pixels] * args.requests, "pixels")
                rates[name].append(figures["images_per_s"])
                batches[name].append(figures["mean_batch"])
    finally:
        await service.stop()
    on_the_cpu = Setting(dry_run=False, device="cpu", shape=TINY_SHAPE)  # nothing to synchronise between calls
    sync_call_ms = statistics.median(time_calls(lambda: device.run(pixels[None]), on_the_cpu, 50)) * 1000
    ceiling = args.max_batch / (args.compute_ms / 1000)
    return {
        "setup": {
            "compute_ms": args.compute_ms,
            "max_batch": args.max_batch,
            "in_flight_requests": 4 * args.max_batch,
            "requests_per_run": args.requests,
            "rounds": args.rounds,
            "ceiling_images_per_s": round(ceiling),
            "sync_call_ms": round(sync_call_ms, 3),  # a sync call overshoots COMPUTE by the host's sleep granularity
            "torch_threads": torch.get_num_threads(),
        },
        "variants": {
            name: {
                "images_per_s": round(statistics.median(rates[name])),
                "ratio_to_ceiling": round(statistics.median(rates[name]) / ceiling, 3),
                "mean_batch": round(statistics.median(batches[name]), 2),
                "rounds": [round(rate) for rate in rates[name]],
            }
            for name in VARIANTS
        },
    }


def main() -> int:
    args = arguments()
    with tempfile.TemporaryDirectory(prefix="bench-batching-") as directory:
        checkpoint = random_checkpoint(Path(directory), TINY_SHAPE)
        settings = Settings(
            checkpoint=checkpoint, device="cpu", max_batch=args.max_batch, max_queue=16 * args.max_batch
        )
        figures = asyncio.run(measure(args, settings))
    print(
        f"stand-in device: {args.compute_ms} ms a batch of {args.max_batch}, ceiling "
        f"{figures['setup']['ceiling_images_per_s']} images/s; medians of {args.rounds} interleaved rounds"
    )
    for name, result in figures["variants"].items():
        print(
            f"  {name:26s} {result['images_per_s']:6d} images/s  {result['ratio_to_ceiling']:.2f} of the ceiling  "
            f"mean batch {result['mean_batch']}  rounds {result['rounds']}"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
