"""A DynamicBatcher running on its own model thread, for tests that drive it in-process, and an
event loop whose clock moves only when the loop would otherwise sleep (virtual time)."""

from __future__ import annotations

import asyncio
import selectors
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from app.batching import DynamicBatcher


@asynccontextmanager
async def running_batcher(
    run_batch, batch_sizes: list[int], queue_waits: list | None = None, finish_batch=None, **options
):
    """Yields a started batcher whose batch sizes are appended to ``batch_sizes`` (and, given
    ``queue_waits``, each batch's list of queue waits to it); given ``finish_batch``, run on a
    finisher thread of its own, as the service does; closes it after (running what is still queued)."""

    def record(size: int, waits: list[float]) -> None:
        batch_sizes.append(size)
        if queue_waits is not None:
            queue_waits.append(waits)

    with ThreadPoolExecutor(1) as model_thread, ThreadPoolExecutor(1) as finisher:
        if finish_batch is not None:
            options.update(finish_batch=finish_batch, finisher=finisher)
        batcher = DynamicBatcher(run_batch, model_thread, on_batch=record, **options)
        batcher.start()
        try:
            yield batcher
        finally:
            await batcher.close()


class _SkippingSelector(selectors.DefaultSelector):
    """Where the loop would sleep until its next timer with nothing ready, it jumps its clock there
    instead; with no timer due it blocks for real (a model thread's result wakes it)."""

    def __init__(self, loop: VirtualTimeLoop):
        super().__init__()
        self.loop = loop

    def select(self, timeout: float | None = None):
        if timeout is None or timeout <= 0:
            return super().select(timeout)
        ready = super().select(0)
        if not ready:
            self.loop.now += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """``time()`` starts at 0 and advances only by the sleeps the loop skips: a 30 s timeout passes
    at once, and the loop's clock then reads 30 s later, whatever the machine's speed."""

    def __init__(self):
        self.now = 0.0
        super().__init__(_SkippingSelector(self))

    def time(self) -> float:
        return self.now


def run_in_virtual_time(make_coroutine):
    """Runs ``make_coroutine(loop)`` to completion on a fresh VirtualTimeLoop."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(make_coroutine(loop))
    finally:
        loop.close()
