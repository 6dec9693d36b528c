"""Decoding uploads fairly: FairDecoder runs decode jobs on a fixed number of threads, and a free
thread takes the next image of the waiting request that has had the fewest images started (the
earliest such request on a tie): requests of equal progress take turns, image by image, and a
request that has just arrived goes first, so a small request waits for the images being decoded,
not behind every image of the big requests that came before it. PixelBudget caps the pixels one
request may decode.
No HTTP here: the service calls them, app/errors.py maps RequestTooLarge to its status.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from .exceptions import RequestTooLarge


class PixelBudget:
    """A request's allowance of decoded pixels, drawn on by its images as each is about to be decoded
    (from the decode threads): the image that would pass the limit is refused, so one request never
    decodes more than ``limit`` pixels."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, width: int, height: int) -> None:
        with self._lock:
            if self.used + width * height > self.limit:
                raise RequestTooLarge(
                    f"the images of this request decode to more than {self.limit} pixels in all, the limit "
                    "(CLIP_MAX_REQUEST_PIXELS): send fewer or smaller images, or several requests "
                    "(a JPEG decodes at a reduced scale, so it counts less)"
                )
            self.used += width * height


class _Job:
    def __init__(self, call: Callable[[], Any], future: asyncio.Future):
        self.call = call
        self.future = future


class _Request:
    """One request's jobs not yet started, in upload order, and how many have started."""

    def __init__(self, jobs: list[_Job]):
        self.jobs = deque(jobs)
        self.started = 0


class FairDecoder:
    def __init__(self, threads: int):
        self.threads = threads
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="decode")
        self._waiting: list[_Request] = []  # requests with images not started, in arrival order
        self._running = 0

    async def map(self, function: Callable[[Any], Any], items: Sequence[Any]) -> list:
        """``function(item)`` for each item, on the decode threads; results in order. The first
        failure fails the request, and its images not started yet are never decoded."""
        loop = asyncio.get_running_loop()
        request = _Request([_Job(partial(function, item), loop.create_future()) for item in items])
        futures = [job.future for job in request.jobs]
        if request.jobs:
            self._waiting.append(request)
            self._start_jobs()
        try:
            return list(await asyncio.gather(*futures))
        finally:
            self._drop(request, futures)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)

    def _start_jobs(self) -> None:
        loop = asyncio.get_running_loop()
        while self._running < self.threads and self._waiting:
            request = min(self._waiting, key=lambda waiting: waiting.started)  # the first such on a tie
            job = request.jobs.popleft()
            request.started += 1
            if not request.jobs:
                self._waiting.remove(request)
            self._running += 1
            loop.run_in_executor(self._executor, job.call).add_done_callback(partial(self._finished, job))

    def _finished(self, job: _Job, done: asyncio.Future) -> None:
        self._running -= 1
        if not job.future.done():  # else its request has failed or gone
            error = None if done.cancelled() else done.exception()
            if done.cancelled():
                job.future.cancel()
            elif error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(done.result())
        self._start_jobs()

    def _drop(self, request: _Request, futures: list[asyncio.Future]) -> None:
        if request.jobs:
            request.jobs.clear()
            self._waiting.remove(request)
        for future in futures:
            future.cancel()  # a no-op for the done ones; the running ones' results are dropped
