"""How much of a fast device does the service's own request path leave unused? On the CPU, in one run.

The service itself (app/service.py ZeroShotService: its DynamicBatcher, model thread, label cache,
logits and result rows) serves one-image requests of pre-decoded pixels, 4 x max batch of them in
flight, as bench/gpu/engine.py's `predecoded` does on a GPU. The one thing replaced is the image
tower's forward pass: a stand-in that returns ready embeddings after COMPUTE ms with the interpreter
lock released (time.sleep), as a GPU computes while the Python thread that launched CUDA graphs
waits. What stands between the service and the stand-in's ceiling (max batch / COMPUTE) is then the
request path alone: the event loop's work per request, the hand-overs between it and the model
thread, and who waits for whom.

Variants, interleaved over rounds (medians): CLIP_BATCHES_IN_FLIGHT=1 (the next batch is formed
once the running one is done) and 2 (a full batch waits behind the running one), each also with
the interpreter's switch interval at 0.1 ms instead of 5 ms.

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

from common import LABELS, TINY_SHAPE, random_checkpoint  # noqa: E402
from engine import Pipeline, photo_like_jpegs  # noqa: E402

from app.service import ZeroShotService  # noqa: E402
from app.settings import Settings  # noqa: E402

FAST_SWITCH_INTERVAL = 1e-4  # seconds; CPython's default is 5e-3
VARIANTS = {  # name: (batches in flight, switch interval)
    "in_flight_1": (1, None),
    "in_flight_2": (2, None),
    "in_flight_1_fast_switch": (1, FAST_SWITCH_INTERVAL),
    "in_flight_2_fast_switch": (2, FAST_SWITCH_INTERVAL),
}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compute-ms", type=float, default=3.0, help="the stand-in device's time per batch")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4000, help="per timed run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    return parser.parse_args()


def stand_in_tower(embeddings: torch.Tensor, seconds: float):
    """engine.encode_images' replacement: the first len(pixels) ready embeddings, after ``seconds``
    spent with the interpreter lock released."""

    def encode_images(pixels: torch.Tensor) -> torch.Tensor:
        time.sleep(seconds)
        return embeddings[: len(pixels)]

    return encode_images


async def measure(args: argparse.Namespace, settings: Settings) -> dict:
    service = ZeroShotService(settings)
    service.start()
    engine = await service.wait_loaded()
    pixels = engine.decode_image(photo_like_jpegs(1, (64, 48))[0])
    await service.classify_pixels([pixels], LABELS, None)  # the labels are cached from here on
    ready = engine.encode_images(torch.stack([pixels] * args.max_batch))
    engine.encode_images = stand_in_tower(ready, args.compute_ms / 1000)
    pipeline = Pipeline(service, decoders=None, in_flight=4 * args.max_batch)
    assert service.batcher is not None
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    batches: dict[str, list[float]] = {name: [] for name in VARIANTS}
    default_switch = sys.getswitchinterval()
    try:
        for _ in range(args.rounds):
            for name, (in_flight, switch) in VARIANTS.items():
                service.batcher.in_flight = in_flight
                sys.setswitchinterval(switch or default_switch)
                await pipeline.run([pixels] * 300, "pixels")  # warm-up
                figures = await pipeline.run([pixels] * args.requests, "pixels")
                rates[name].append(figures["images_per_s"])
                batches[name].append(figures["mean_batch"])
    finally:
        sys.setswitchinterval(default_switch)
        await service.stop()
    ceiling = args.max_batch / (args.compute_ms / 1000)
    return {
        "setup": {
            "compute_ms": args.compute_ms,
            "max_batch": args.max_batch,
            "in_flight_requests": 4 * args.max_batch,
            "requests_per_run": args.requests,
            "rounds": args.rounds,
            "ceiling_images_per_s": round(ceiling),
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
