"""DynamicBatcher: gathers the images of concurrent requests into one forward pass.

Each image travels with its request's ``context`` (for classification, the request's class
embeddings), so ``run_batch`` can finish every request's work on the device in the same call:
one trip to the model thread and one wait for the device per batch, not one per request.

A batch closes when it holds ``max_batch`` images or ``max_wait`` seconds after its first
image arrived, whichever comes first. One worker runs batches, one at a time, in ``executor``
(off the event loop). The queue is bounded in images: a request that does not fit is refused
at once (Overloaded) rather than left to wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import torch

from .exceptions import NotReady, Overloaded, ShuttingDown


@dataclass
class _Item:
    pixels: torch.Tensor  # (3, H, W) uint8
    context: Any  # what run_batch needs besides the pixels (shared by a request's images)
    future: asyncio.Future
    queued_at: float  # on the batcher's clock


class DynamicBatcher:
    def __init__(
        self,
        run_batch: Callable[[torch.Tensor, list[Any]], Sequence[torch.Tensor]],
        executor: Executor,
        max_batch: int,
        max_wait: float,
        max_queue: int,
        on_batch: Callable[[int, list[float]], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        incoming: Callable[[], int] | None = None,
    ):
        self.run_batch = run_batch  # (B, 3, H, W) uint8, B contexts -> B results, called in executor
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.on_batch = on_batch  # (batch size, queue waits in seconds), for metrics
        self.on_queue = on_queue  # images queued, each time that changes, for metrics
        self.clock = clock  # seconds; a test passes its event loop's virtual time
        # images accepted upstream but not submitted yet (still decoding): a batch waits up to
        # max_wait only while some are on their way; with none, a lone request starts at once.
        # None: unknown, always wait.
        self.incoming = incoming
        self._pending: list[_Item] = []
        self._arrived = asyncio.Event()
        self._closing = False
        self._worker: asyncio.Task | None = None

    @property
    def queued(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="dynamic-batcher")

    async def submit(self, images: list[torch.Tensor], context: Any = None) -> list[torch.Tensor]:
        """run_batch's result for each of ``images``, in order, once the batches holding them have run."""
        if self._closing:
            raise ShuttingDown()
        if self._worker is None:
            raise NotReady("the batcher is not running")
        if len(self._pending) + len(images) > self.max_queue:
            raise Overloaded(
                f"the server is busy: {len(self._pending)} images are queued and the queue holds "
                f"{self.max_queue}; retry shortly"
            )
        loop = asyncio.get_running_loop()
        now = self.clock()
        items = [_Item(pixels, context, loop.create_future(), now) for pixels in images]
        self._pending.extend(items)
        self._queue_changed()
        self._arrived.set()
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        except asyncio.CancelledError:  # the client left (or the drain ended): its images leave the queue
            self._withdraw(items)
            raise

    async def close(self) -> None:
        """Refuse new work, run what is queued, stop the worker."""
        self._closing = True
        self._arrived.set()
        if self._worker is not None:
            await self._worker

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._fill_or_expire()
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            self._queue_changed()
            await self._execute(batch)

    def _withdraw(self, items: list[_Item]) -> None:
        """Takes a cancelled request's images still queued out of the queue at once: they free their
        places, and no batch waits for company on their behalf."""
        leaving = {id(item) for item in items}
        self._pending = [item for item in self._pending if id(item) not in leaving]
        self._queue_changed()
        self._arrived.set()  # the batch being gathered looks again at what is left

    def _queue_changed(self) -> None:
        if self.on_queue is not None:
            self.on_queue(len(self._pending))

    async def _fill_or_expire(self) -> None:
        """Wait for more images until the batch is full, max_wait has passed since its first image
        arrived, or no more are on their way (what queued while the model was busy runs at once).
        The first image is looked up on each pass: a cancelled request may have taken it away."""
        while self._pending and len(self._pending) < self.max_batch and not self._closing and self._more_expected():
            remaining = self._pending[0].queued_at + self.max_wait - self.clock()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _more_expected(self) -> bool:
        return self.incoming is None or self.incoming() > 0

    async def _execute(self, batch: list[_Item]) -> None:
        batch = [item for item in batch if not item.future.done()]  # a request cancelled (drain over) has gone
        if not batch:
            return
        started = self.clock()
        if self.on_batch is not None:
            self.on_batch(len(batch), [started - item.queued_at for item in batch])
        pixels = torch.stack([item.pixels for item in batch])
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.run_batch, pixels, [item.context for item in batch]
            )
        except Exception as error:  # a failed batch fails its own requests, never the worker
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        for item, output in zip(batch, outputs):
            if not item.future.done():  # the client may have gone away
                item.future.set_result(output)
