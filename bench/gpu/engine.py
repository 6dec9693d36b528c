#!/usr/bin/env python3
"""Step 5 of bench/gpu.sh: the engine end to end without HTTP. A ViT-B/16-size random checkpoint
served by the service itself (app/service.py ZeroShotService: ZeroShotEngine on the device, dtype
auto = bf16 on CUDA, its DynamicBatcher, model thread and decode pool, the service's max batch and
wait); every request is one image classified against 10 labels whose embeddings are cached before
timing.

    python3 bench/gpu/engine.py --result engine.json             # on the GPU host, about 30 s
    python3 bench/gpu/engine.py --result /tmp/e.json --dry-run   # tiny shape on the CPU, seconds

Measured, each written as soon as it is measured:
  ceiling       (c) the tower alone: engine.encode_images on a ready uint8 batch of max_batch;
  jpeg_cpu      (a) 640x480 JPEGs decoded by engine.decode_image on os.cpu_count() threads;
  predecoded    (b) the same requests with uint8 input already at the input size (batcher + model);
  jpeg_gpu      (d) as (a), decoded by torchvision.io.decode_jpeg on the GPU and resized there;
  decode_only   the JPEG decode alone on those threads (no model), to tell what bounds (a).
Each: images/s, the mean batch the batcher ran, request latency, and its ratio to the ceiling.

Then diagnoses of (b), which ran at 0.39 of the ceiling on an H200 (one batch at a time then, the
model thread waiting for each batch's results): the eager tower at batch 32 spends its ~4 ms
launching kernels from Python, and that thread shares one interpreter lock with the event loop's
per-request work, so the two run one after the other. The service now starts a batch on the model
thread and finishes it on another (app/batching.py), so the model thread need not wait for the GPU:
  predecoded_one_in_flight  (b) with CLIP_BATCHES_IN_FLIGHT=1: the next batch formed only once the
                      last one's results are back (one batch at a time, though not the old service
                      exactly: bench/results/batching-cpu-2026-11-28-launch-ahead.md);
  predecoded_switch   (b) with the interpreter's switch interval at 0.1 ms instead of 5 ms, so
                      the model thread gets the lock back sooner each time it lets it go;
  predecoded_graphs   (b) served through CLIP_COMPILE's compiled tower (app/compiling.py), as CUDA
                      graphs on CUDA (torch.compile mode "reduce-overhead": one launch per batch),
                      at max_batch only, against its own ceiling too (ceiling_graphs).

--dry-run: the tiny shape on the CPU, 64x48 JPEGs, max batch 4, a few dozen requests.
"""

from __future__ import annotations

import asyncio
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from common import LABELS, Results, Setting, log, random_checkpoint, step_arguments, time_calls
from common import setting as step_setting
from measuring import (
    Budget,
    Entry,
    Skip,
    describe_host,
    engine_max_batch,
    entry,
    exit_status,
    images_per_s,
    milliseconds,
    quiet_threads,
    ratio,
)
from PIL import Image

from app.compiling import CompilePlan, compile_plan, prepare_tower
from app.engine import ZeroShotEngine
from app.service import ZeroShotService
from app.settings import Settings
from model.config import VisionConfig

FAST_SWITCH_INTERVAL = 1e-4  # seconds; CPython's default is 5e-3
COMPILE_NEED_S = 15  # seconds a compile of the tower for one batch size takes on the GPU host (7-14 s measured)


@dataclass
class Plan:
    image_size: tuple[int, int]  # (width, height) of the JPEGs
    distinct_images: int
    requests: int  # per timed run
    warmup_requests: int
    ceiling_iterations: int
    budget: Budget
    need_s: float  # seconds a run needs to be started


def make_plan(setting: Setting, budget_seconds: float | None = None) -> Plan:
    if setting.dry_run:
        return Plan(
            (64, 48),
            distinct_images=4,
            requests=32,
            warmup_requests=8,
            ceiling_iterations=5,
            budget=Budget(600),
            need_s=0,
        )
    return Plan(
        (640, 480),
        distinct_images=8,
        requests=3072,
        warmup_requests=256,
        ceiling_iterations=30,
        budget=Budget(budget_seconds or 48),
        need_s=5,
    )


def photo_like_jpegs(count: int, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """Distinct JPEGs (quality 90) with what makes photos cost to decode: colour gradients, soft blobs,
    hard edges and fine grain, so neither trivially small nor incompressible noise."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x, y = x / width, y / height
    images = []
    for _ in range(count):
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * x + np.sin(angle) * y)[..., None]
        image = rng.uniform(40, 200, 3) + rng.uniform(-60, 60, 3) * ramp
        for _ in range(6):
            cx, cy, radius = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
            blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))[..., None]
            image = image + rng.uniform(-80, 80, 3) * blob
        for _ in range(4):  # hard edges, as objects have
            left, top = rng.uniform(0, 0.8), rng.uniform(0, 0.8)
            inside = (x > left) & (x < left + rng.uniform(0.05, 0.3)) & (y > top) & (y < top + rng.uniform(0.05, 0.3))
            image = np.where(inside[..., None], rng.uniform(0, 255, 3), image)
        image = image + rng.normal(0, 6, image.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def resize_like_preprocess(image: torch.Tensor, vision: VisionConfig) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, S, S) uint8 on the tensor's device, as model/preprocess.py's ``resize``:
    bicubic (antialiased, PIL's filter) to the input size, "crop" = shorter side then centre crop."""
    size = vision.image_size
    height, width = image.shape[-2:]
    if vision.resize_mode == "squash":
        new_height = new_width = size
    else:
        scale = size / min(width, height)
        new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    resized = F.interpolate(
        image[None].float(), size=(new_height, new_width), mode="bicubic", antialias=True, align_corners=False
    )[0]
    top, left = (new_height - size) // 2, (new_width - size) // 2
    return resized[:, top : top + size, left : left + size].round().clamp(0, 255).to(torch.uint8)


def torchvision_decoder(engine: ZeroShotEngine) -> Callable[[bytes], torch.Tensor]:
    """bytes -> (3, S, S) uint8 on the engine's device: torchvision's decode_jpeg there (nvJPEG on
    CUDA), then ``resize_like_preprocess``. Skip when torchvision cannot."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError as error:
        raise Skip(f"torchvision.io.decode_jpeg is not importable here: {error}") from error
    device, vision = engine.device, engine.config.vision

    def decode(data: bytes) -> torch.Tensor:
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return resize_like_preprocess(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device), vision)

    return decode


class Pipeline:
    """Requests of one image each through the service itself (app/service.py ZeroShotService, no
    HTTP): ``classify`` for JPEG bytes (its decode pool, cache, batcher, logits and result rows), or
    ``classify_pixels`` for pixels already decoded (pre-decoded input, or decoded here on the GPU)."""

    def __init__(self, service: ZeroShotService, decoders: ThreadPoolExecutor, in_flight: int):
        self.service, self.decoders, self.in_flight = service, decoders, in_flight
        self.batch_sizes: list[int] = []
        service.batcher.on_batch = lambda size, waits: self.batch_sizes.append(size)

    async def run(
        self, payloads: list[Any], mode: str, decode: Callable[[bytes], torch.Tensor] | None = None
    ) -> dict[str, Any]:
        """mode "jpeg": payloads are JPEG bytes for service.classify; "pixels": uint8 tensors, or
        bytes that ``decode`` turns into them on this bench's decode threads."""
        loop = asyncio.get_running_loop()
        latencies: list[float] = []
        shapes: set[tuple[int, ...]] = set()
        self.batch_sizes.clear()
        work = iter(enumerate(payloads))

        async def client() -> None:
            """One of ``in_flight`` clients, each sending its next request once the last is answered (as
            a load generator's connections do), rather than a task per request: the harness's own cost
            per request stays small beside the service's."""
            for index, payload in work:
                started = time.perf_counter()
                if mode == "jpeg":
                    answer = await self.service.classify([(f"{index}.jpg", payload)], LABELS, None, top_k=1)
                    shapes.add((len(answer["results"]), len(answer["results"][0]["scores"])))
                else:
                    pixels = payload if decode is None else await loop.run_in_executor(self.decoders, decode, payload)
                    shapes.add(tuple((await self.service.classify_pixels([pixels], LABELS, None)).shape))
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(min(self.in_flight, len(payloads)))))
        elapsed = time.perf_counter() - started
        if shapes != {(1, len(LABELS))}:
            raise RuntimeError(f"results of shapes {shapes}, expected (1, {len(LABELS)}) per request")
        return {
            "images_per_s": round(len(payloads) / elapsed, 2),
            "requests": len(payloads),
            "seconds": round(elapsed, 3),
            "mean_batch": round(statistics.mean(self.batch_sizes), 2),
            "batches": len(self.batch_sizes),
            "request_ms": milliseconds(latencies),
        }


def decode_only(decoders: ThreadPoolExecutor, decode: Callable[[bytes], torch.Tensor], payloads: list[bytes]) -> float:
    """Images/s of ``decode`` alone on the decode threads."""
    started = time.perf_counter()
    list(decoders.map(decode, payloads))
    return round(len(payloads) / (time.perf_counter() - started), 2)


class EngineBench:
    def __init__(self, setting: Setting, results: Results, plan: Plan, service: ZeroShotService):
        self.setting, self.results, self.plan, self.service = setting, results, plan, service
        self.engine = service.engine
        self.max_batch = service.settings.max_batch
        self.threads = service.settings.decode_threads
        self.decoders = ThreadPoolExecutor(self.threads, thread_name_prefix="bench-decode")
        self.pipeline = Pipeline(service, self.decoders, in_flight=4 * self.max_batch)
        self.jpegs = photo_like_jpegs(plan.distinct_images, plan.image_size)
        self.ceiling: float | None = None
        self.rates: dict[str, float] = {}
        self.ratios: dict[str, float | None] = {}

    def close(self) -> None:
        self.decoders.shutdown()

    def requests(self, payloads: list[Any], count: int) -> list[Any]:
        return [payloads[i % len(payloads)] for i in range(count)]

    def describe(self) -> None:
        self.results["setup"] = {
            "engine_device": str(self.engine.device),
            "engine_dtype": str(self.engine.dtype).removeprefix("torch."),
            "input_size": self.engine.config.vision.image_size,
            "max_batch": self.max_batch,
            "batch_wait_ms": self.service.settings.batch_wait_ms,
            "batches_in_flight": self.service.settings.batches_in_flight,
            "decode_threads": self.threads,
            "in_flight_requests": self.pipeline.in_flight,
            "labels": len(LABELS),
            "jpeg": {
                "size": list(self.plan.image_size),
                "distinct": len(self.jpegs),
                "quality": 90,
                "mean_bytes": round(statistics.mean(map(len, self.jpegs))),
            },
            "requests_per_run": self.plan.requests,
            "images_per_request": 1,
        }

    def measure_ceiling(self) -> None:
        with entry(
            self.results,
            "ceiling",
            what="engine.encode_images on a ready uint8 batch (CPU) of max_batch, under inference mode as run_batch",
            batch=self.max_batch,
        ) as e:
            timings = self.time_engine_tower()
            self.ceiling = images_per_s(self.max_batch, timings)
            self.record_rate(e, self.ceiling, batch_ms=milliseconds(timings))

    def record_rate(self, e: Entry, rate: float, **figures: Any) -> None:
        """An entry's images/s (and its ratio to the ceiling), in the entry and in the headline."""
        e.record(images_per_s=rate, **figures)
        self.rates[e.key] = rate
        self.results["images_per_s"] = dict(self.rates)
        if e.key != "ceiling":
            e.record(ratio_to_ceiling=ratio(rate, self.ceiling))
            self.ratios[e.key] = e.data["ratio_to_ceiling"]
            self.results["ratios_to_ceiling"] = dict(self.ratios)
        batches = f", mean batch {figures['mean_batch']}" if "mean_batch" in figures else ""
        log(f"{e.key}: {rate:.1f} images/s{batches}")

    async def measure_requests(self, e: Entry, payloads: list[Any], mode: str, decode: Callable | None = None) -> None:
        """A warm-up run, then a timed run of ``plan.requests`` requests cycling through ``payloads``."""
        self.plan.budget.require(self.plan.need_s, e.key)
        await self.pipeline.run(self.requests(payloads, self.plan.warmup_requests), mode, decode)
        figures = await self.pipeline.run(self.requests(payloads, self.plan.requests), mode, decode)
        self.record_rate(e, figures.pop("images_per_s"), **figures)

    async def measure_cpu_decode(self) -> None:
        with entry(
            self.results,
            "jpeg_cpu",
            what=f"(a) service.classify on JPEG bytes: decoded on its "
            f"{self.threads} decode threads, then batcher, model, results",
        ) as e:
            await self.measure_requests(e, self.jpegs, "jpeg")

    async def measure_predecoded(self) -> None:
        with entry(
            self.results,
            "predecoded",
            what="(b) service.classify_pixels on uint8 pixels already at the "
            "input size: the batcher and the model alone",
        ) as e:
            await self.measure_requests(e, self.predecoded_pixels(), "pixels")

    async def measure_gpu_decode(self) -> None:
        with entry(
            self.results,
            "jpeg_gpu",
            what="(d) JPEG decoded and resized on the device (torchvision.io.decode_jpeg), then as (a)",
            decode_device=str(self.engine.device),
            differs_from_cpu_path="decodes at full size, then resizes (PIL decodes a JPEG at a reduced DCT "
            "scale first: 640x480 -> 320x240); no EXIF orientation or colour-mode "
            "handling; torch's antialiased bicubic follows PIL's filter but rounds "
            "differently",
        ) as e:
            self.plan.budget.require(self.plan.need_s, e.key)
            decode = torchvision_decoder(self.engine)
            on_device, on_cpu = decode(self.jpegs[0]), self.engine.decode_image(self.jpegs[0])
            difference = (on_device.cpu().int() - on_cpu.int()).abs().float()
            e.record(
                pixels_vs_cpu_path={
                    "mean_abs": round(difference.mean().item(), 3),
                    "max_abs": int(difference.max().item()),
                }
            )
            await self.measure_requests(e, self.jpegs, "pixels", decode)

    def measure_decode_only(self) -> None:
        with entry(
            self.results,
            "decode_only",
            what="engine.decode_image alone on the decode threads, no model",
            threads=self.threads,
        ) as e:
            self.plan.budget.require(self.plan.need_s, "decode_only")
            payloads = self.requests(self.jpegs, self.plan.requests)
            decode_only(self.decoders, self.engine.decode_image, payloads[: self.plan.warmup_requests])
            self.record_rate(e, decode_only(self.decoders, self.engine.decode_image, payloads))

    def predecoded_pixels(self) -> list[torch.Tensor]:
        return [self.engine.decode_image(data) for data in self.jpegs]

    async def measure_predecoded_one_in_flight(self) -> None:
        batcher = self.service.batcher
        assert batcher is not None
        with entry(
            self.results,
            "predecoded_one_in_flight",
            what="(b) with CLIP_BATCHES_IN_FLIGHT=1: the next batch is formed once the running one is done",
            batches_in_flight=1,
        ) as e:
            default, batcher.in_flight = batcher.in_flight, 1
            try:
                await self.measure_requests(e, self.predecoded_pixels(), "pixels")
            finally:
                batcher.in_flight = default

    async def measure_predecoded_fast_switch(self) -> None:
        with entry(
            self.results,
            "predecoded_switch",
            what="(b) with sys.setswitchinterval(1e-4): the model thread waits less for the interpreter lock",
            switch_interval_s=FAST_SWITCH_INTERVAL,
        ) as e:
            default = sys.getswitchinterval()
            sys.setswitchinterval(FAST_SWITCH_INTERVAL)
            try:
                await self.measure_requests(e, self.predecoded_pixels(), "pixels")
            finally:
                sys.setswitchinterval(default)

    def ready_batch(self) -> torch.Tensor:
        """A batch as the batcher hands it over: max_batch random uint8 images on the CPU, pinned on
        CUDA (encode_images pins a batch first; in the service that copy overlaps the GPU's work on
        the batch before, so the ceiling leaves it out: pin_memory returns a pinned tensor as it is)."""
        size = self.engine.config.vision.image_size
        batch = torch.randint(0, 256, (self.max_batch, 3, size, size), dtype=torch.uint8)
        return batch.pin_memory() if self.engine.device.type == "cuda" else batch

    def time_engine_tower(self) -> list[float]:
        """Seconds per engine.encode_images call on a ready batch, under inference mode as run_batch
        calls it (so a compiled graph is the one batches reuse)."""
        batch = self.ready_batch()
        with torch.inference_mode():
            return time_calls(
                lambda: self.engine.encode_images(batch), self.setting, self.plan.ceiling_iterations, warmup=3
            )

    def compile_and_time_tower(self, plan: CompilePlan) -> tuple[float, list[float]]:
        """CLIP_COMPILE's own start-up step (app/compiling.py prepare_tower) with ``plan``, then the
        tower timed at max_batch: (seconds to compile and record, per-call seconds)."""
        started = time.perf_counter()
        prepare_tower(self.engine, "on", self.max_batch, plan)
        self.setting.sync()
        return round(time.perf_counter() - started, 1), self.time_engine_tower()

    def graphs_plan(self) -> CompilePlan:
        """CLIP_COMPILE's plan on this device, for max_batch alone (one compile, not six: the timed
        batches are all full but the last, which is padded). The dry run: dynamo's capture without
        inductor's C++ build, the path, not the speed."""
        serving = compile_plan(self.engine.device, self.max_batch)
        options = {"backend": "eager"} if self.setting.dry_run else serving.options
        return CompilePlan([self.max_batch], options, pad=True)

    async def measure_predecoded_graphs(self) -> None:
        plan = self.graphs_plan()
        with entry(
            self.results,
            "predecoded_graphs",
            what=f"(b) served through CLIP_COMPILE's compiled tower (torch.compile {plan.options}: CUDA graphs "
            f"on CUDA) at batch {self.max_batch}, smaller batches padded up to it",
            compile_options=plan.options,
        ) as e:
            self.plan.budget.require(self.plan.need_s + COMPILE_NEED_S, e.key)
            # compiled, recorded and timed on the service's model thread, where batches run: CUDA graphs
            # recorded by torch.compile belong to the thread that recorded them
            compile_s, timings = await self.service._on_model_thread(self.compile_and_time_tower, plan)
            e.record(compile_s=compile_s)
            own_ceiling = images_per_s(self.max_batch, timings)
            self.results["ceiling_graphs"] = {"images_per_s": own_ceiling, "batch_ms": milliseconds(timings)}
            await self.measure_requests(e, self.predecoded_pixels(), "pixels")
            e.record(ratio_to_own_ceiling=ratio(self.rates[e.key], own_ceiling))

    async def run(self) -> None:
        self.describe()
        self.measure_ceiling()
        await self.measure_cpu_decode()
        await self.measure_predecoded()
        await self.measure_gpu_decode()
        self.measure_decode_only()
        await self.measure_predecoded_one_in_flight()
        await self.measure_predecoded_fast_switch()
        await self.measure_predecoded_graphs()


async def measure(setting: Setting, results: Results, plan: Plan, settings: Settings) -> None:
    """Start the service (load + warm-up, as clip-serve does), cache the labels, run the bench."""
    started = time.perf_counter()
    service = ZeroShotService(settings)
    service.start()
    await service.wait_loaded()
    results["load_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    await service.classify_pixels([service.engine.decode_image(photo_like_jpegs(1, (64, 48))[0])], LABELS, None)
    results["first_request_ms"] = round((time.perf_counter() - started) * 1000, 2)  # the labels are cached from here on
    bench = EngineBench(setting, results, plan, service)
    try:
        await bench.run()
    finally:
        bench.close()
        await service.stop()


def main() -> int:
    args = step_arguments(__doc__.split("\n\n")[0]).parse_args()
    setting = step_setting(args.dry_run)
    results = Results(args.result)
    for key in ("images_per_s", "ratios_to_ceiling"):  # the headline, first in the file
        results[key] = {}
    plan = make_plan(setting, args.budget)
    quiet_threads(setting)
    results["host"] = describe_host(setting)
    log(f"engine: {setting.device}, {'dry run' if setting.dry_run else 'real run'}")
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as directory:
        checkpoint = random_checkpoint(Path(directory), setting.shape)
        settings = Settings(
            checkpoint=checkpoint,
            device=setting.device,
            max_batch=engine_max_batch(setting),
            decode_threads=os.cpu_count() or 1,
            max_queue=16 * engine_max_batch(setting),
        )
        asyncio.run(measure(setting, results, plan, settings))
    log(f"engine: done, {plan.budget.seconds - plan.budget.left():.1f} s since start")
    return exit_status(results)


if __name__ == "__main__":
    raise SystemExit(main())
