"""DynamicBatcher: gathers the images of concurrent requests into one forward pass.

Each image travels with its request's ``context`` (for classification, the request's class
embeddings), so ``run_batch`` can finish every request's work on the device in the same call:
one trip to the model thread and one wait for the device per batch, not one per request.

A batch closes when it holds ``max_batch`` images or ``max_wait`` seconds after its first
image arrived, whichever comes first. Batches run in ``executor`` (off the event loop; the
service's has one thread, so one at a time). Given ``finish_batch``, what ``run_batch`` returns
goes straight on to ``finish_batch`` in ``finisher`` (another thread): the model thread queues a
batch's work on the device and takes the next while the finisher waits for the last one's
results and splits them per image, so a GPU is handed its next batch before it runs dry.

Up to ``in_flight`` batches are unfinished (handed over, results not back) at once: while one
runs, a full batch is handed over behind it, so it starts the moment the first ends instead of
waiting for the event loop to deliver results and gather more; a partial batch keeps gathering
until nothing is unfinished. The queue is bounded in images: a request that does not fit is
refused at once (Overloaded) rather than left to wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

import torch

from .exceptions import NotReady, Overloaded, ShuttingDown


class _Request:
    """One submit call: its images' results, gathered as their batches finish, and one future
    that the submitter awaits (one wake-up per request, however many images and batches)."""

    __slots__ = ("future", "results", "remaining")

    def __init__(self, future: asyncio.Future, images: int):
        self.future = future
        self.results: list[Any] = [None] * images
        self.remaining = images

    def deliver(self, position: int, result: Any) -> None:
        if self.future.done():  # failed by an earlier batch, or the client went away
            return
        self.results[position] = result
        self.remaining -= 1
        if self.remaining == 0:
            self.future.set_result(self.results)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


@dataclass
class _Item:
    pixels: torch.Tensor  # (3, H, W) uint8
    context: Any  # what run_batch needs besides the pixels (shared by a request's images)
    request: _Request
    position: int  # of the image in its request
    queued_at: float  # on the batcher's clock


class DynamicBatcher:
    def __init__(
        self,
        run_batch: Callable[[torch.Tensor, list[Any]], Any],
        executor: Executor,
        max_batch: int,
        max_wait: float,
        max_queue: int,
        on_batch: Callable[[int, list[float]], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        incoming: Callable[[], int] | None = None,
        in_flight: int = 2,
        finish_batch: Callable[[Any], Sequence[Any]] | None = None,
        finisher: Executor | None = None,
    ):
        # (B, 3, H, W) uint8, B contexts -> B results, or what finish_batch turns into them; in executor
        self.run_batch = run_batch
        self.finish_batch = finish_batch  # run_batch's result -> B results, in finisher
        self.finisher = finisher
        if (finish_batch is None) != (finisher is None):
            raise ValueError("finish_batch and finisher go together: give both or neither")
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
        self.in_flight = in_flight  # batches handed to the executor and not finished (results back), at most
        self._running: set[asyncio.Task] = set()  # batches handed over, until their results are delivered
        self._unfinished = 0  # batches handed over whose results are not back yet
        self._pending: list[_Item] = []
        self._changed = asyncio.Event()  # an image arrived or left the queue, or a batch came back
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
        if not images:
            return []
        request = _Request(asyncio.get_running_loop().create_future(), len(images))
        now = self.clock()
        items = [_Item(pixels, context, request, position, now) for position, pixels in enumerate(images)]
        self._pending.extend(items)
        self._queue_changed()
        self._changed.set()
        try:
            return await request.future
        except asyncio.CancelledError:  # the client left (or the drain ended): its images leave the queue
            self._withdraw(items)
            raise

    async def close(self) -> None:
        """Refuse new work, run what is queued, stop the worker."""
        self._closing = True
        self._changed.set()
        if self._worker is not None:
            await self._worker

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    if self._running:
                        await asyncio.wait(self._running)
                    return
                self._changed.clear()
                await self._changed.wait()
                continue
            await self._fill_or_expire()
            await self._wait_for_a_turn()
            if not self._pending:  # withdrawn while it waited
                continue
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            self._queue_changed()
            self._start(batch)

    async def _wait_for_a_turn(self) -> None:
        """Returns at once while no batch is unfinished; behind those that are, once there is room
        (fewer than ``in_flight``) for a full batch; looks again whenever something changes."""
        while self._unfinished and (self._unfinished >= self.in_flight or len(self._pending) < self.max_batch):
            self._changed.clear()
            await self._changed.wait()

    def _withdraw(self, items: list[_Item]) -> None:
        """Takes a cancelled request's images still queued out of the queue at once: they free their
        places, and no batch waits for company on their behalf."""
        leaving = {id(item) for item in items}
        self._pending = [item for item in self._pending if id(item) not in leaving]
        self._queue_changed()
        self._changed.set()  # the batch being gathered looks again at what is left

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
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _more_expected(self) -> bool:
        return self.incoming is None or self.incoming() > 0

    def _start(self, batch: list[_Item]) -> None:
        """Hands the batch to the executor now (not from a task started later: by then the requests
        woken by the last batch would have run first), and a task delivers its results."""
        batch = [item for item in batch if not item.request.future.done()]  # a cancelled or failed request has gone
        if not batch:
            return
        started = self.clock()
        if self.on_batch is not None:
            self.on_batch(len(batch), [started - item.queued_at for item in batch])
        outcome: Future = Future()  # the batch's results, set by whichever thread finishes it
        try:
            pixels = torch.stack([item.pixels for item in batch])
            self.executor.submit(self._run_batch, pixels, [item.context for item in batch], outcome)
        except Exception as error:  # e.g. an executor already shut down: this batch fails, the worker goes on
            for item in batch:
                item.request.fail(error)
            return
        self._unfinished += 1
        task = asyncio.create_task(self._deliver(batch, asyncio.wrap_future(outcome)))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def _run_batch(self, pixels: torch.Tensor, contexts: list[Any], outcome: Future) -> None:
        """On the model thread: run_batch, then its result handed on to finish_batch in the finisher
        from here (not by way of the event loop, which may be busy) while this thread takes the next."""
        if not outcome.set_running_or_notify_cancel():
            return
        try:
            result = self.run_batch(pixels, contexts)
            if self.finisher is None:
                outcome.set_result(result)
            else:
                self.finisher.submit(self._finish, result, outcome)
        except BaseException as error:  # the batch fails, not this thread
            outcome.set_exception(error)

    def _finish(self, result: Any, outcome: Future) -> None:
        assert self.finish_batch is not None  # checked with finisher in __init__
        try:
            outcome.set_result(self.finish_batch(result))
        except BaseException as error:
            outcome.set_exception(error)

    async def _deliver(self, batch: list[_Item], outcome: asyncio.Future) -> None:
        outputs: Sequence[torch.Tensor] = []
        failure: Exception | None = None
        try:
            outputs = await outcome
            if len(outputs) != len(batch):  # zip would drop the rest, and their requests wait forever
                raise RuntimeError(f"run_batch returned {len(outputs)} results for a batch of {len(batch)} images")
        except Exception as error:  # a failed batch fails its own requests, never the worker
            failure = error
            outputs = []
        finally:
            # before the results go out (and wake their requests): the batcher hands the model thread its
            # next batch first, instead of after every request woken here has run
            self._unfinished -= 1
            self._changed.set()
        for item, output in zip(batch, outputs):
            item.request.deliver(item.position, output)
        if failure is not None:
            for item in batch:
                item.request.fail(failure)
