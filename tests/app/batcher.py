"""A DynamicBatcher running on its own model thread, for tests that drive it in-process."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from app.batching import DynamicBatcher


@asynccontextmanager
async def running_batcher(run_batch, batch_sizes: list[int], **options):
    """Yields a started batcher whose batch sizes are appended to ``batch_sizes``; closes it after
    (running what is still queued)."""
    with ThreadPoolExecutor(1) as model_thread:
        batcher = DynamicBatcher(
            run_batch, model_thread, on_batch=lambda size, waits: batch_sizes.append(size), **options
        )
        batcher.start()
        try:
            yield batcher
        finally:
            await batcher.close()
