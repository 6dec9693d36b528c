"""CLIP_COMPILE: the image tower compiled with torch.compile at start-up, a graph per batch size
(static shapes, ``dynamic=False``: the graph for a size is reused for every batch of that size, and
no batch at request time can trigger a recompile).

On a CPU, for small batches only (``CPU_BATCH_SIZES``), each at its exact size: at small batches a
forward pass is mostly per-operation overhead, which compiling (fused kernels, no Python between
operations) removes; at large ones it is matrix multiplications either way. On the project's 2-core
EPYC (the bundled tower, fp32, 2 threads, idle): batch 1 14.5 ms compiled against 22.3 ms eager
(1.54x), batch 8 78 against 78 ms, batch 32 395 against 394 ms (in bench/serve.py's ceilings of
2026-11-28 the batch-1 gain no longer stood out from the machine's noise, hence the default ``off``;
docs/service.md). Every other size runs the eager tower.

On CUDA, as CUDA graphs (mode "reduce-overhead": a batch is one graph launch) for every power of two
up to the largest batch, and the largest batch itself (``bucket_sizes``); a batch runs at the next of
them up, padded with blank images. Why: the eager ViT-B/16 tower on an H200 spends its ~4 ms at batch
32 launching ~200 kernels from Python, holding the interpreter lock the event loop needs for its
per-request work, so the service ran at 0.39 of the tower alone (bench/results/gpu-h200-2026-11-28*).
Padding costs little on a GPU, where a batch of 17 and one of 32 take about as long.

The graphs are compiled (and, under ``auto``, timed against eager) on the model thread while the
model loads, so ``/readyz`` answers 503 until they are done and no request pays for a compile.
torch.compile on a CPU writes C++ and builds it: it needs a C++ compiler (``$CXX``, else ``g++``)
and a writable cache (``$TORCHINDUCTOR_CACHE_DIR``, else ``/tmp/torchinductor_<user>``; the
processes of CLIP_WORKERS share it safely: inductor writes each entry atomically, under a lock).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .engine import ZeroShotEngine
from .exceptions import StartupError

log = logging.getLogger("app.compiling")

CPU_BATCH_SIZES = (1, 2, 4)
# auto keeps a compiled size only when its median time is at least this much below eager's: a
# compiled graph that merely ties costs start-up time and memory for nothing, and a noisy machine
# must not flip the choice on a few percent
MIN_SPEED_UP = 1.05
TIMING_ROUNDS = 7
CALLS_TO_RECORD = 3  # per size at start-up: compile, then (CUDA graphs) a warm-up run and the recording

Tower = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CompilePlan:
    batch_sizes: list[int]  # a graph each
    options: dict[str, Any]  # torch.compile's keyword arguments besides dynamic=False
    pad: bool  # a batch of another size runs at the next compiled size up (else eager)


def compile_plan(device: torch.device, max_batch: int) -> CompilePlan:
    if device.type == "cuda":
        return CompilePlan(bucket_sizes(max_batch), {"mode": "reduce-overhead"}, pad=True)
    return CompilePlan([size for size in CPU_BATCH_SIZES if size <= max_batch], {}, pad=False)


def bucket_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... below ``max_batch``, then ``max_batch``: every batch is padded by less than half."""
    sizes = [1 << power for power in range(max_batch.bit_length()) if 1 << power < max_batch]
    return sizes + [max_batch]


def prepare_tower(engine: ZeroShotEngine, mode: str, max_batch: int, plan: CompilePlan | None = None) -> None:
    """Compile the engine's image tower for the batch sizes of its device's plan (``compile_plan``)
    up to ``max_batch`` (``on``), or for those of them where compiled measures faster (``auto``), and
    make the engine use it for them. ``off`` leaves the engine eager. Raises StartupError under ``on``
    when compiling fails; under ``auto`` the engine stays eager and a warning says why."""
    if mode == "off":
        return
    plan = plan or compile_plan(engine.device, max_batch)
    sizes = plan.batch_sizes
    # a graph per size: dynamo stops compiling a function after recompile_limit graphs (8 by default) and
    # silently runs it eager from then on; room for these sizes on top of any graphs compiled before
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, len(sizes) + 8)
    compiled = torch.compile(engine.eager_tower, dynamic=False, **plan.options)
    engine.use_compiled(compiled, sizes)  # exact sizes while compiling: each call compiles its own graph
    started = time.perf_counter()
    try:
        for size in sizes:
            # through the request path, with input made as a request's is: the graph compiled here is the
            # one requests reuse (dynamo's guards tell an inference tensor from a plain one, for one).
            # Called CALLS_TO_RECORD times: CUDA graph trees run a graph's first call uncaptured and
            # record it on a later one, which must not be a request's
            for _ in range(CALLS_TO_RECORD):
                engine.encode_images(blank_pixels(size, engine.config.vision.image_size))
    except Exception as error:
        engine.use_compiled(compiled, [])
        torch._dynamo.reset()  # drop what the failed attempt left behind
        reason = first_line(error)
        if mode == "on":
            raise StartupError(
                f"CLIP_COMPILE=on but the image tower could not be compiled ({reason}). torch.compile needs "
                f"a C++ compiler on a CPU (install g++, or point CXX at one), Triton on CUDA, and a writable "
                f"TORCHINDUCTOR_CACHE_DIR; or set CLIP_COMPILE=auto (eager where compiling fails) or off"
            ) from error
        log.warning("CLIP_COMPILE=auto: compiling the image tower failed (%s); serving the eager tower", reason)
        return
    log.info("compiled the image tower for batch sizes %s in %.1f s", sizes, time.perf_counter() - started)
    if mode == "auto":
        timings = {size: time_towers(engine, compiled, size) for size in sizes}
        sizes = kept_sizes(timings, plan.pad)
        log.info(
            "CLIP_COMPILE=auto: median ms eager / compiled: %s; compiled for %s, eager for the rest",
            ", ".join(f"batch {size} {eager:.1f} / {fast:.1f}" for size, (eager, fast) in timings.items()),
            f"batch sizes {sizes}" if sizes else "no batch size",
        )
    engine.use_compiled(compiled, sizes, pad=plan.pad)


def faster_sizes(timings: dict[int, tuple[float, float]]) -> list[int]:
    """The batch sizes whose (eager, compiled) times show compiled at least MIN_SPEED_UP faster."""
    return [size for size, (eager, compiled) in timings.items() if eager / compiled >= MIN_SPEED_UP]


def kept_sizes(timings: dict[int, tuple[float, float]], pad: bool) -> list[int]:
    """What ``auto`` keeps compiled: the faster sizes; when batches are padded, all of them or none (a
    batch runs at the next compiled size up, so with a size dropped, the batches padding would have
    sent there would run a larger graph, never timed against eager at their own size)."""
    faster = faster_sizes(timings)
    return [] if pad and len(faster) < len(timings) else faster


def time_towers(engine: ZeroShotEngine, compiled: Tower, size: int) -> tuple[float, float]:
    """Median milliseconds of the eager and the compiled tower at batch ``size``, interleaved so that
    a change in the machine's load hits both alike."""
    eager_ms: list[float] = []
    compiled_ms: list[float] = []
    with torch.inference_mode():
        pixels = blank_pixels(size, engine.config.vision.image_size).to(engine.device)  # as encode_images does
        for _ in range(TIMING_ROUNDS):
            for tower, times in ((engine.eager_tower, eager_ms), (compiled, compiled_ms)):
                started = time.perf_counter()
                tower(pixels)
                if engine.device.type == "cuda":
                    torch.cuda.synchronize(engine.device)
                times.append(1000 * (time.perf_counter() - started))
    return statistics.median(eager_ms), statistics.median(compiled_ms)


def blank_pixels(size: int, side: int) -> torch.Tensor:
    """A batch as the batcher hands it over: (size, 3, side, side) uint8 on the CPU."""
    return torch.zeros(size, 3, side, side, dtype=torch.uint8)


def first_line(error: Exception) -> str:
    """An inductor error's first line (the rest is a traceback of the generated code)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]
